"""Training the zero-shot and dialogue checkpoints: LIMA's recipe on TRL + PEFT."""
