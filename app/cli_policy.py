"""`agentsvc policy show|set`: agents' traffic policies from a shell."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from app.agents.policy import PolicySpec
    from app.settings import Settings
    from app.store.db import Database

policy = typer.Typer(no_args_is_help=True, help="Show and change agents' traffic policies.")


@policy.command("show")
def show_policy(agent: Annotated[str, typer.Argument(help="The agent")]) -> None:
    """Print the agent's traffic policy in force, as JSON."""
    typer.echo(_policy_json(agent, None))


@policy.command("set")
def set_policy(
    agent: Annotated[str, typer.Argument(help="The agent")],
    spec: Annotated[
        str,
        typer.Argument(
            help="The policy as JSON (the body of PUT /agent/agents/{agent}/policy), "
            "or @FILE to read it from a file"
        ),
    ],
    expect_revision: Annotated[
        int | None, typer.Option(min=0, help="Only if the policy is still at this revision")
    ] = None,
) -> None:
    """Replace the agent's traffic policy; every replica applies it within
    AGENTSVC_POLICY_REFRESH_S. Prints the policy now in force."""
    from pathlib import Path

    from pydantic import ValidationError

    from app.agents.policy import PolicySpec

    text = Path(spec[1:]).read_text() if spec.startswith("@") else spec
    try:
        parsed = PolicySpec.model_validate_json(text)
    except ValidationError as exc:
        raise typer.BadParameter(str(exc), param_hint="SPEC") from None
    typer.echo(_policy_json(agent, (parsed, expect_revision)))


def _policy_json(agent: str, change: tuple[PolicySpec, int | None] | None) -> str:
    """The agent's policy in force after `change` (None: just read it), as JSON: the answer of
    GET /agent/agents/{agent}/policy."""
    from app.agents.registry import build_registry
    from app.api.policies import PolicyRead
    from app.errors import AppError
    from app.services import rollouts

    async def work(settings: Settings, db: Database) -> str:
        registry = build_registry(settings.agents_module)
        book = rollouts.PolicyBook(db, registry, refresh_s=settings.policy_refresh_s)
        if change is None:
            state = await rollouts.get_policy(book, registry, agent)
        else:
            state = await rollouts.set_policy(
                book, registry, db, None, agent, change[0], expect_revision=change[1]
            )
        return PolicyRead.from_state(state).model_dump_json(indent=2)

    from app.cli import with_db

    try:
        return with_db(work)
    except AppError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
