"""Command implementations: grade, export, predict, bench, complexity, runs, submission,
and the LightningCLI wiring of fit/validate/test. They build on the task-aware core
(tasks, models, data, engine, losses, metrics) and nothing in the core imports them."""
