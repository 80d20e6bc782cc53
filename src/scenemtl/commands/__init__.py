"""Command implementations: grade, export, predict, bench, complexity, runs, submission,
and the LightningCLI wiring of fit/validate/test. They build on the studies, the engine,
the task-aware core and the reporting layer, and nothing below imports them
(docs/architecture.md)."""
