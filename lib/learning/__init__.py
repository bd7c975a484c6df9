"""Training, by what it trains: ``policy`` (the agent's compact policy: SFT, GRPO), ``segmenter`` (interactive
fine-tuning of a tool), ``vlm`` (a vision-language policy with TRL). Shared here: ``loop`` (the step loop's
skeleton), ``checkpoint`` (atomic publishing), ``curves``, ``recipe`` (YAML recipes into dataclasses)."""
