"""`ledger simulate`: the built-in OpenAI-compatible endpoint, standalone."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app
from .common import handled, out

if TYPE_CHECKING:
    from llm_ledger.runners.simulator import SimConfig, Simulator


@app.command("simulate")
def simulate(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")] = 8000,
    latency: Annotated[float, typer.Option(help="Mean latency in seconds.")] = 0.0,
    jitter: Annotated[float, typer.Option(help="Latency jitter, +/- seconds.")] = 0.0,
    error_rate: Annotated[float, typer.Option("--error-rate", help="Share of 500 replies.")] = 0.0,
    rate_429: Annotated[float, typer.Option("--rate-429", help="Share of 429 replies (with Retry-After).")] = 0.0,
    retry_after: Annotated[float, typer.Option("--retry-after", help="Retry-After seconds on 429.")] = 0.05,
    hang_rate: Annotated[float, typer.Option("--hang-rate", help="Share of requests that hang.")] = 0.0,
    reset_rate: Annotated[float, typer.Option("--reset-rate", help="Share of connections dropped mid-body.")] = 0.0,
    malformed_rate: Annotated[float, typer.Option("--malformed-rate", help="Share of malformed bodies.")] = 0.0,
    capacity: Annotated[float, typer.Option("--capacity", help="Requests per second served; above it, 429 with Retry-After (0: unlimited).")] = 0.0,
    accuracy: Annotated[float, typer.Option("--accuracy", metavar="SHARE", help="Share of questions (prompts ending 'answer: X') answered X; the others get another answer, the same ones for a given --seed. E.g. 0.7.")] = 1.0,
    model: Annotated[str, typer.Option(help="Model name served.")] = "sim-1",
    seed: Annotated[int, typer.Option(help="Seed of replies and faults.")] = 0,
    request_log: Annotated[str, typer.Option("--request-log", help="Append one JSON line per request here.")] = "",
    batch_window: Annotated[float, typer.Option("--batch-window", metavar="SECONDS", help="Batch API: the \"24 h\" completion window, scaled down to seconds; a batch not done by then expires with what it ran.")] = 10.0,
    batch_seconds: Annotated[float, typer.Option("--batch-seconds", metavar="SECONDS", help="Batch API: seconds a batch takes to run all its requests.")] = 0.0,
    batch_fail_validation: Annotated[int, typer.Option("--batch-fail-validation", metavar="N", help="Batch API fault: the first N batches created fail validation (nothing runs).")] = 0,
    batch_expire: Annotated[int, typer.Option("--batch-expire", metavar="N", help="Batch API fault: the first N batches expire at the window's end with half their requests done.")] = 0,
    batch_error_lines: Annotated[int, typer.Option("--batch-error-lines", metavar="N", help="Batch API fault: the first N batches answer every third request with a 500 in the error file.")] = 0,
    batch_torn_lines: Annotated[int, typer.Option("--batch-torn-lines", metavar="N", help="Batch API fault: the first N batches' output files have every fourth line cut short (billed, unreadable).")] = 0,
    batch_create_500: Annotated[int, typer.Option("--batch-create-500", metavar="N", help="Batch API fault: the first N POST /v1/batches create the batch, then answer 500.")] = 0,
) -> None:
    """Serve a deterministic OpenAI-compatible endpoint with configurable faults."""
    from llm_ledger.projections.outputs import check_output_path
    from llm_ledger.runners.config import check_sim
    from llm_ledger.runners.simulator import SimConfig

    with handled():
        if request_log:
            request_log = check_output_path(request_log)
        config = SimConfig(model=model, seed=seed, latency=latency, latency_jitter=jitter, rate_429=rate_429,
                       retry_after=retry_after, rate_500=error_rate, rate_hang=hang_rate, rate_reset=reset_rate,
                       rate_malformed=malformed_rate, request_log=request_log,
                       capacity_rps=capacity, accuracy=accuracy, batch_window=batch_window, batch_seconds=batch_seconds,
                       batch_fail_validation=batch_fail_validation, batch_expire=batch_expire,
                       batch_error_lines=batch_error_lines, batch_create_500=batch_create_500,
                       batch_torn_lines=batch_torn_lines)
        check_sim(config, "ledger simulate")
        sim = _start(config, port)
    out.print(f"simulator on {sim.base_url} (model {model}); Ctrl-C to stop", highlight=False)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        sim.stop()


def _start(config: SimConfig, port: int) -> Simulator:
    from llm_ledger.runners.simulator import Simulator

    return Simulator(config, port=port).start()
