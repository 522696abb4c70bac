"""The schema, as numbered migrations. A shipped migration is never edited: add the next one.

Ids are time-ordered random hex strings, so sessions made on several machines merge without
clashes. Times are ISO 8601 UTC strings. Ratings and verdicts are never overwritten: a new one
clears the `current` flag of the one it replaces (at most one current per turn and annotator).
`turns.exchange` numbers the user/assistant pairs down a branch (1, 2, 3 ...): LIMA's turn index.
`turns.lane` is null in chat mode and "a" / "b" for the two sides of a compare session.
"""

from sqlite_utils import Database, Migrations

migrations = Migrations("limachat")


@migrations()
def m001_initial(db: Database) -> None:
    db["sessions"].create(
        {"id": str, "created": str, "mode": str, "prompt_set": str, "prompt": str, "annotator": str,
         "notes": str, "meta": str, "closed": str},
        pk="id", not_null={"created", "mode"},
    )
    db["turns"].create(
        {"id": str, "session_id": str, "parent_id": str, "lane": str, "exchange": int, "role": str, "content": str,
         "checkpoint": str, "model": str, "endpoint": str, "params": str, "prompt_tokens": int,
         "completion_tokens": int, "ttft": float, "latency": float, "status": str, "error": str, "created": str},
        pk="id", not_null={"session_id", "role", "content", "status", "created"},
        foreign_keys=[("session_id", "sessions", "id"), ("parent_id", "turns", "id")],
    )
    db["ratings"].create(
        {"id": str, "turn_id": str, "annotator": str, "label": str, "comment": str, "created": str, "current": int},
        pk="id", not_null={"turn_id", "annotator", "label", "created", "current"},
        foreign_keys=[("turn_id", "turns", "id")],
    )
    db["edits"].create(
        {"id": str, "turn_id": str, "annotator": str, "content": str, "created": str},
        pk="id", not_null={"turn_id", "annotator", "content", "created"},
        foreign_keys=[("turn_id", "turns", "id")],
    )
    db["verdicts"].create(
        {"id": str, "session_id": str, "turn_a": str, "turn_b": str, "checkpoint_a": str, "checkpoint_b": str,
         "verdict": str, "annotator": str, "created": str, "current": int},
        pk="id", not_null={"session_id", "turn_a", "turn_b", "verdict", "annotator", "created", "current"},
        foreign_keys=[("session_id", "sessions", "id"), ("turn_a", "turns", "id"), ("turn_b", "turns", "id")],
    )
    db["turns"].create_index(["session_id", "created"])
    db["turns"].create_index(["parent_id"])
    # Covers the report's and export's walks of the tree, so they never read the (large) content.
    db["turns"].create_index(["id", "parent_id", "session_id", "lane", "role", "status", "checkpoint", "exchange", "created"],
                             index_name="turns_tree")
    db["ratings"].create_index(["turn_id"])
    db["edits"].create_index(["turn_id"])
    db["verdicts"].create_index(["session_id"])
    # One current rating per (turn, annotator) and one current verdict per (pair, annotator).
    db.execute("CREATE UNIQUE INDEX ratings_current ON ratings (turn_id, annotator) WHERE current = 1")
    db.execute("CREATE UNIQUE INDEX verdicts_current ON verdicts (turn_a, turn_b, annotator) WHERE current = 1")


@migrations()
def m002_sampling_and_fluency(db: Database) -> None:
    """Per assistant turn: the sampling preset it was asked with, the preset's keys its endpoint was
    not sent (`omit_params`, JSON list), and its fluency (the base's mean NLL per token of the reply)."""
    db["turns"].add_column("preset", str)
    db["turns"].add_column("omitted", str)
    db["turns"].add_column("fluency", float)
