"""Training a vision-language policy with TRL: SFT data export and training (``sft``), multi-turn GRPO
(``grpo``)."""
