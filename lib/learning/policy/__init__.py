"""Training the agent's policy: expert episodes (``data``), supervised fine-tuning (``sft``), GRPO (``rl``),
and the verl export of RL prompts with its reward entry point (``verl_export``)."""
