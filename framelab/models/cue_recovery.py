"""ViCuR's cue recovery: sink-token cross-attention over the visual tokens, during prefill.

The sink is the first `<|im_start|>` token of each document (one per row of a padded batch, one
per document of a packed row). After every decoder layer whose 0-based index is a multiple of
`every` (the released code: 5, so layers 0, 5, 10, ...), a full-width multi-head cross-attention
block runs with

    query        = RMSNorm_q(sink hidden state)                               (one per document)
    keys, values = RMSNorm_kv(hidden states of that document's visual tokens at this layer)

(q, k, v, o projections hidden -> hidden, no bias, no pooling of the visual tokens), and its
output is added to the sink's row only. Later layers read the sink through ordinary causal
self-attention, so the evidence the sink gathered reaches every later token. The output
projection starts at zero: a fresh module leaves the model's outputs exactly unchanged.

Prefill only: the block runs when the forward pass feeds the sink (a full forward, or a decode's
prefill), never on decode steps, whose single new tokens are not sinks; the sink's cached keys
and values already carry what it gathered. A full forward of prompt + completion therefore equals
prefill + cached decode: the visual tokens' hidden states depend on the prompt only (causal
attention). The visual tokens are those of the same forward pass: frames a tool returns during a
multi-turn rollout (fed as a continuation) are not gathered, while a full forward over that
sequence would gather them too.

A document without visual tokens (a text-only question) leaves its sink unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from framelab.kernels import AttentionSpec, attention
from framelab.models.layers import RMSNorm


class SinkCrossAttention(nn.Module):
    """One block: RMSNorm'd sink queries attend to RMSNorm'd visual tokens; zero-initialised o."""

    def __init__(self, hidden: int, heads: int, eps: float = 1e-6):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"cue recovery: hidden ({hidden}) must be a multiple of heads "
                             f"({heads})")
        self.heads = heads
        self.query_norm = RMSNorm(hidden, eps)
        self.visual_norm = RMSNorm(hidden, eps)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, sinks: torch.Tensor, visual: torch.Tensor,
                allowed: torch.Tensor) -> torch.Tensor:
        """(n, D) additions for n sinks from m visual tokens (m, D); `allowed` (n, m) bool says
        which visual tokens each sink may read (every row has at least one)."""
        n, d = sinks.shape
        h = self.heads
        q = self.q_proj(self.query_norm(sinks)).view(1, n, h, d // h)
        kv = self.visual_norm(visual)
        k = self.k_proj(kv).view(1, -1, h, d // h)
        v = self.v_proj(kv).view(1, -1, h, d // h)
        out = attention(q, k, v, AttentionSpec(causal=False, mask=allowed[None, None]))
        return self.o_proj(out.reshape(n, d))


class CueRecovery(nn.Module):
    """The blocks after layers 0, every, 2 every, ... < layers (see the module docstring)."""

    def __init__(self, hidden: int, heads: int, layers: int, every: int, eps: float = 1e-6):
        super().__init__()
        if every < 1:
            raise ValueError(f"cue recovery every={every}: expected a layer interval of at least 1")
        self.after = list(range(0, layers, every))
        self.blocks = nn.ModuleList(SinkCrossAttention(hidden, heads, eps) for _ in self.after)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal init (std hidden^-1/2) for q, k, v; zeros for o: the module starts as a no-op."""
        for block in self.blocks:
            for proj in (block.q_proj, block.k_proj, block.v_proj):
                nn.init.normal_(proj.weight, std=proj.weight.shape[1] ** -0.5)
            nn.init.zeros_(block.o_proj.weight)

    def inputs(self, input_ids: torch.Tensor, sink_id: int, visual_ids: list[int],
               cu_seqlens: torch.Tensor | None = None) -> "CueInputs":
        """Where the sinks and visual tokens of rows of `input_ids` (B, S) are."""
        b, s = input_ids.shape
        doc = torch.zeros(b, s, dtype=torch.long, device=input_ids.device)
        if cu_seqlens is not None:
            cu = cu_seqlens.to(input_ids.device).long()
            doc = torch.searchsorted(cu[1:], torch.arange(s, device=input_ids.device),
                                     right=True).expand(b, s)
        is_start = input_ids == sink_id
        # the first start token of each (row, document): no earlier start in the same document
        seen = torch.zeros_like(is_start)
        for row in range(b):
            first: set[int] = set()
            for i in is_start[row].nonzero()[:, 0].tolist():
                d = int(doc[row, i])
                if d not in first:
                    first.add(d)
                    seen[row, i] = True
        visual = torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device))
        return CueInputs(self, seen, visual, doc)

    def forward(self, index: int, x: torch.Tensor, sink: torch.Tensor, visual: torch.Tensor,
                doc: torch.Tensor) -> torch.Tensor:
        """`x` (B, S, D) after decoder layer `index`, with the sink rows updated when a block
        follows that layer."""
        if index not in self.after:
            return x
        block = self.blocks[self.after.index(index)]
        rows, cols = sink.nonzero(as_tuple=True)
        vrows, vcols = visual.nonzero(as_tuple=True)
        if len(rows) == 0 or len(vrows) == 0:
            return x
        allowed = (rows[:, None] == vrows[None, :]) & (doc[rows, cols][:, None] ==
                                                        doc[vrows, vcols][None, :])
        has = allowed.any(1)
        if not bool(has.any()):
            return x
        rows, cols, allowed = rows[has], cols[has], allowed[has]
        add = block(x[rows, cols], x[vrows, vcols], allowed)
        return x.index_put((rows, cols), x[rows, cols] + add.to(x.dtype))


@dataclass
class CueInputs:
    """The sinks (B, S) and visual tokens (B, S) of one forward pass and each position's document
    (B, S); `after_layer(i, x)` is the decoder's hook."""
    module: CueRecovery
    sink: torch.Tensor
    visual: torch.Tensor
    doc: torch.Tensor

    def after_layer(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.module(index, x, self.sink, self.visual, self.doc)

    def extended(self, new: int) -> "CueInputs":
        """The same sinks with `new` more positions that are neither sinks nor visual (the slots a
        re-run of the whole sequence adds after the prompt)."""
        pad = lambda t, v: torch.cat([t, t.new_full((t.shape[0], new), v)], 1)  # noqa: E731
        return CueInputs(self.module, pad(self.sink, False), pad(self.visual, False),
                         pad(self.doc, -1))

    @staticmethod
    def stack(rows: list["CueInputs | None"], widths: list[int], width: int) -> "CueInputs | None":
        """Single-row inputs (1, n_i) right-aligned into (B, width) (generation's left padding);
        a row without cue inputs has no sink."""
        given = [r for r in rows if r is not None]
        if not given:
            return None
        device = given[0].sink.device
        sink = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
        visual = torch.zeros_like(sink)
        doc = torch.full((len(rows), width), -1, dtype=torch.long, device=device)
        for i, (r, n) in enumerate(zip(rows, widths)):
            if r is not None:
                sink[i, width - n:], visual[i, width - n:], doc[i, width - n:] = \
                    r.sink[0], r.visual[0], r.doc[0]
        return CueInputs(given[0].module, sink, visual, doc)
