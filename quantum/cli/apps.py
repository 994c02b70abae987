"""The command groups of ``quantum``; each module of this package adds its commands to them."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Quantum Suite: a DevSecOps saga orchestrator on Temporal and NATS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
pipeline_app = typer.Typer(help="Request, follow, list and cancel pipeline runs.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
events_app = typer.Typer(help="Publish, follow and describe the domain events on the bus.", no_args_is_help=True)
app.add_typer(events_app, name="events")
bench_app = typer.Typer(help="Benchmarks, reported as ratios against a baseline of the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
dlq_app = typer.Typer(help="Events the bridge could not use, kept with their reason.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
deployments_app = typer.Typer(help="The releases runs deployed: list them, stop one.", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")
audit_app = typer.Typer(help="The review audit trail (QUANTUM_AUDIT): check its hash chains.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
reviews_app = typer.Typer(help="Runs that wait for reviews.", no_args_is_help=True)
app.add_typer(reviews_app, name="reviews")
