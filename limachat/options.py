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
        click.option("--raters", type=click.Choice(["humans", "judges", "all"]), default="humans", show_default=True,
                     help="Whose ratings count: people's, LLM judges' (`limachat judge`), or both."),
        click.option("--human-wins", is_flag=True, help="Where a person rated a turn, only people's labels count (with --raters all)."),
        click.option("--min-score", type=click.FloatRange(0, 5),
                     help="Every assistant turn scored at least this by `limachat judge score` (AlpaGasus kept 4.5 and up)."),
        click.option("--selection", help="Only the chains of this named selection (`limachat select`)."),
        click.option("--gold-from", type=click.Choice(["humans", "teachers", "both"]), default="humans", show_default=True,
                     help="With --prefer-gold: people's edits, teachers' revisions (`limachat revise`), or both, a person's winning."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


