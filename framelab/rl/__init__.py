"""framelab's RL engine: rollouts, rewards, advantages and losses shared by the RL and distillation stages."""
