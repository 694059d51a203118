"""prompt_tuning: steer frozen pretrained LMs with small learned parameters."""
