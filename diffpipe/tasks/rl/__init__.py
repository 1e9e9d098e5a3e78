"""RL fine-tuning: reward plugins, continuous algorithms (`continuous/`), discrete ones (`discrete/`), the stage."""
