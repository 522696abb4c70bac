"""The commands the `limachat` CLI assembles, one module per group (as TRL's trl/cli/commands): `run`
(base, serve, demo, app, users), `data` (config, import, export, report), `study` (study, queue), `bench`,
`curate` (judge, select, filter, ablate, revise) and `train`. A command parses its options, calls the
layers below and turns their errors into one line; no command imports the CLI, and no layer below
imports a command."""
