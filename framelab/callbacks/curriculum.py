"""Short-to-long curriculum: a schedule, by optimizer step, of the data budget and the rotary base.

    phases: [{step: 0, max_frames: 8, max_tokens: 1024}, {step: 300, max_frames: 32, max_tokens: 4096},
             {step: 600, max_frames: 128, max_tokens: 16384, rope_theta: 5.0e6}]

Phase i is in force from optimizer step `phases[i].step` on. Each key is optional per phase; an
absent key keeps the previous phase's value.
- `max_frames`, `max_tokens`: with a datamodule that takes a schedule (`set_budget_schedule`, the
  video-text one), the phases are handed to it at fit start, converted to training-batch indices
  (step × accumulate_grad_batches): batch b is then decoded and packed under the budget of the
  phase of its step, exactly from that step on, whatever was prefetched, and a resumed run gets
  the very batches of the uninterrupted one (tested). Other datamodules get `set_max_frames(n)` /
  `set_max_tokens(n)` when a phase is entered (from the next fetched batch on); one without the
  setter a phase asks for is a one-line error.
- `stage` -> `pl_module.set_stage(stage)` when the phase is entered (VideoLLMModule: e.g. the
  vision stage, then sft, in one run).
- `freeze` -> `pl_module.set_frozen(parts)` when the phase is entered: the listed parts (e.g.
  `[vision]`) stop learning from then on, the others (except those `module.freeze` names) learn
  (FramelabModule; e.g. the tower trained by the vision stage, then frozen for SFT).
- `rope_theta` -> `pl_module.set_rope_theta(theta)` (FramelabModule: its model's LM), at the end
  of the step before the phase (InternVideo3 does not publish a per-phase RoPE base; it is an
  option here, off unless given).
The run is never restarted. Logged every step: `curriculum/phase`, `curriculum/max_frames`,
`curriculum/max_tokens`, `curriculum/rope_theta` (what is in force). Resume: the phase in force
is saved in the checkpoint and re-applied in `on_fit_start`, before the first batches are fetched.

The paper (InternVideo3 SFT) grows the sequence length to 32K with 379K long videos; its exact
phase boundaries are unknown, hence a config list.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from framelab.errors import UserError

KEYS = ("max_frames", "max_tokens", "rope_theta", "stage", "freeze")


class ShortToLongCurriculum(Callback):
    def __init__(self, phases: list[dict]):
        if not phases:
            raise UserError("callbacks.curriculum.phases is empty; give at least [{step: 0, ...}]")
        cleaned, last = [], -1
        for i, p in enumerate(phases):
            p = dict(p)
            unknown = set(p) - {"step", *KEYS}
            if unknown:
                raise UserError(f"callbacks.curriculum.phases[{i}] has unknown keys {sorted(unknown)}; "
                                f"valid: step, {', '.join(KEYS)}")
            step = int(p.get("step", 0))
            if step <= last or (i == 0 and step != 0):
                raise UserError(f"callbacks.curriculum.phases[{i}].step={step}: steps must start at 0 "
                                "and increase")
            last = step
            if p.get("freeze") is not None:
                if isinstance(p["freeze"], str):
                    p["freeze"] = [p["freeze"]]
                p["freeze"] = [str(part) for part in p["freeze"]]
            cleaned.append(p)
        # fill absent keys from the previous phase, so every phase says what is in force
        state: dict = {k: None for k in KEYS}
        self.phases = []
        for p in cleaned:
            state = {**state, **{k: p[k] for k in KEYS if p.get(k) is not None}}
            self.phases.append({"step": int(p.get("step", 0)), **state})
        self.current: int | None = None
        self.restored: dict | None = None
        self.by_batch = False     # data budgets handed to the datamodule as a schedule (fit start)

    def phase_at(self, step: int) -> int:
        return max(i for i, p in enumerate(self.phases) if p["step"] <= step)

    def in_force(self) -> dict:
        return dict(self.phases[self.current]) if self.current is not None else {}

    def scheduled(self, trainer) -> bool:
        """Hand the data budgets to the datamodule as a schedule by batch, when it takes one."""
        dm = trainer.datamodule
        if not hasattr(dm, "set_budget_schedule"):
            return False
        every = max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1))
        dm.set_budget_schedule([{"batch": p["step"] * every, "max_frames": p["max_frames"],
                                 "max_tokens": p["max_tokens"]} for p in self.phases])
        return True

    def apply(self, trainer, pl_module, index: int) -> None:
        phase, dm = self.phases[index], trainer.datamodule
        by_batch = self.by_batch
        if phase["max_frames"] is not None and not by_batch:
            dm.set_max_frames(int(phase["max_frames"]))
        if phase["max_tokens"] is not None and not by_batch:
            if not hasattr(dm, "set_max_tokens"):
                raise UserError(f"curriculum phase {index} sets max_tokens but {type(dm).__name__} "
                                "has no set_max_tokens(n); drop max_tokens from the phases")
            dm.set_max_tokens(int(phase["max_tokens"]))
        if phase["stage"] is not None:
            if not hasattr(pl_module, "set_stage"):
                raise UserError(f"curriculum phase {index} sets stage but {type(pl_module).__name__} "
                                "has no stages; drop stage from the phases")
            pl_module.set_stage(str(phase["stage"]))
        if phase["freeze"] is not None:
            if not hasattr(pl_module, "set_frozen"):
                raise UserError(f"curriculum phase {index} sets freeze but {type(pl_module).__name__} "
                                "cannot freeze parts; drop freeze from the phases")
            pl_module.set_frozen(list(phase["freeze"]))
        if phase["rope_theta"] is not None:
            if not hasattr(pl_module, "set_rope_theta"):
                raise UserError(f"curriculum phase {index} sets rope_theta but "
                                f"{type(pl_module).__name__} has no set_rope_theta; drop rope_theta "
                                "from the phases")
            pl_module.set_rope_theta(float(phase["rope_theta"]))
        self.current = index

    def on_fit_start(self, trainer, pl_module) -> None:
        # before the first batches are fetched: the phase saved in the checkpoint (resume) or the
        # one of the current step (a fresh run: phase 0)
        self.by_batch = self.scheduled(trainer)
        saved = (self.restored or {}).get("phase")
        self.apply(trainer, pl_module, saved if saved is not None else self.phase_at(trainer.global_step))

    def on_train_start(self, trainer, pl_module) -> None:
        index = self.phase_at(trainer.global_step)
        if self.restored is not None and self.restored.get("phase") is not None:
            saved = self.restored["phase"]
            if saved != index and self.restored.get("phases") == self.phases:
                raise UserError(f"curriculum: checkpoint at step {trainer.global_step} was in phase "
                                f"{saved} but the schedule says {index}")
        self.apply(trainer, pl_module, index)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        index = self.phase_at(trainer.global_step)
        if index != self.current:
            self.apply(trainer, pl_module, index)
        phase = self.phases[self.current]
        pl_module.log("curriculum/phase", float(self.current))
        for key in KEYS:
            if phase[key] is not None and key not in ("stage", "freeze"):
                pl_module.log(f"curriculum/{key}", float(phase[key]))

    def state_dict(self) -> dict:
        return {"phase": self.current, "phases": self.phases}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = dict(state_dict)
