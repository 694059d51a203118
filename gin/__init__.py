"""Gin files (models/, methods/, runs/), installed as `prompt_tuning.gin`."""
