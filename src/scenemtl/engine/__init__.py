"""Training engine: LightningModule, callbacks, schedules, LightningCLI wiring."""
