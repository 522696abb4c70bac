"""Command-line options shared by several commands."""

import click


def filter_options(f):
    """The export filters, shared by `export` and `train --from-db`."""
    opts = [
        click.option("--min-label", type=click.Choice(["fail", "pass", "excellent"]), help="Every assistant turn rated at least this."),
        click.option("--cut-at-first-fail", is_flag=True, help="Keep each chain up to the exchange before its first fail."),
        click.option("--prefer-gold", is_flag=True, help="Use gold edits in place of the replies they correct."),
        click.option("--checkpoint", help="Only chains answered by this checkpoint."),
        click.option("--annotator", help="Only this annotator's ratings count."),
        click.option("--mode", type=click.Choice(["chat", "compare", "blind", "imported"])),
        click.option("--since", help="Sessions created at or after this ISO date/time."),
        click.option("--until", help="Sessions created before this ISO date/time."),
        click.option("--min-turns", type=click.IntRange(1), default=1, show_default=True, help="Assistant turns per chain."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


