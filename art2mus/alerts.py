"""Failure alerts: a failed, timed-out or crashed flow run notifies through a Prefect notification block.

The alert is a flow hook (`on_failure`, `on_crashed`), so it runs wherever the flow runs: Prefect's
ephemeral mode (the embedded default) and a Prefect server alike, without server-side services. For
served or deployed runs whose process dies outright, Prefect's runner calls the `on_crashed` hooks
itself. Where the alert goes is Prefect's business: any saved `NotificationBlock` (`alerts.block`,
e.g. a Custom Webhook made by `art2mus alerts webhook URL`, a Slack webhook, a SendGrid e-mail), or a
webhook URL in the environment (`alerts.webhook_env`), never a URL in a tracked file.

An alert that cannot be delivered is logged; it never replaces the run's own failure.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any

from art2mus.config import AlertsParams, load_params
from art2mus.errors import Art2MusError

if TYPE_CHECKING:
    from prefect.blocks.abstract import NotificationBlock

logger = logging.getLogger(__name__)

WEBHOOK_BLOCK_TYPE = "custom-webhook"  # CustomWebhookNotificationBlock's slug
# The body a webhook receives; Slack-style receivers read `text`, others `subject` and `body`.
WEBHOOK_JSON = {"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"}


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str


def traceback_codes(error: BaseException) -> list[CodeType]:
    """The code objects of every frame the error (and what it interrupted) passed through, outermost first."""
    codes: list[CodeType] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # a timeout's cause is the interrupted call
        seen.add(id(current))
        frame: TracebackType | None = current.__traceback__
        while frame is not None:
            codes.append(frame.tb_frame.f_code)
            frame = frame.tb_next
        current = current.__cause__ or current.__context__
    return codes


def task_names(module_name: str) -> dict[CodeType, str]:
    """code object of each Prefect task's function in a module -> the task's name."""
    from prefect import Task

    module = sys.modules.get(module_name)
    return {value.fn.__code__: value.name for value in vars(module).values()
            if isinstance(value, Task)} if module else {}


def failing_step(error: BaseException | None, flow: Any) -> str:
    """The task the run failed in (the innermost one), else the flow function it failed in."""
    if error is None:
        return "unknown (the run recorded no exception)"
    module = flow.fn.__module__
    tasks = task_names(module)
    codes = traceback_codes(error)
    step = next((tasks[code] for code in reversed(codes) if code in tasks), None)
    if step is None:
        in_module = [code.co_name for code in codes if code.co_filename == sys.modules[module].__file__] \
            if module in sys.modules else []
        step = f"{in_module[-1]} (in the {flow.name} flow, outside any task)" if in_module else f"the {flow.name} flow"
    stage = getattr(error, "stage", None)
    return f"{step} (DVC stage {stage!r})" if isinstance(stage, str) and stage else step


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_error(state: Any) -> BaseException | None:
    """The exception the run ended with, None when the state holds none."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - a result that cannot be read must not stop the alert
        return None
    return result if isinstance(result, BaseException) else None


def is_timeout(state: Any, error: BaseException | None) -> bool:
    """The flow's own timeout (state TimedOut) or a task's (a TimeoutError ended the run)."""
    return state.name == "TimedOut" or isinstance(error, TimeoutError)


def compose_alert(flow: Any, flow_run: Any, state: Any, project: Path) -> Alert:
    """Subject and body: the flow run, the project, the failing step, the error's first line."""
    error = run_error(state)
    if is_timeout(state, error):
        outcome, verb = "TIMED OUT", "timed out"
    elif state.is_crashed():
        outcome, verb = "CRASHED", "crashed"
    else:
        outcome, verb = "FAILED", "failed"
    if error is not None and state.name != "TimedOut":  # a flow timeout's own error only says "scope timed out"
        message = f"{type(error).__name__}: {first_line(str(error))}"
    else:
        message = first_line(state.message or "") or "no message"
    lines = [f"art2mus: the {flow.name} flow run {flow_run.name!r} {verb}.",
             f"project: {project.name} ({project})",
             f"flow run: {flow_run.name} (id {flow_run.id})",
             f"failing step: {failing_step(error, flow)}",
             f"error: {message}",
             f"state: {state.name}: {first_line(state.message or '')}"]
    if flow_run.deployment_id:
        lines.append(f"deployment: {flow_run.deployment_id}")
    return Alert(subject=f"art2mus {flow.name} {outcome}: flow run {flow_run.name!r} ({project.name})",
                 body="\n".join(lines))


def webhook_block(url: str, name: str = "art2mus-alerts") -> NotificationBlock:
    """A Custom Webhook notification block posting the alert as JSON to `url`."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(name=name, url=url, method="POST", json_data=dict(WEBHOOK_JSON))


def block_slug_name(block: str) -> tuple[str, str]:
    """'<block type slug>/<block name>' -> its two parts, or a clear error."""
    slug, _, name = block.partition("/")
    if not slug or not name:
        raise Art2MusError(f"params.yaml: alerts.block must be '<block type>/<block name>' "
                           f"(e.g. {WEBHOOK_BLOCK_TYPE}/art2mus-alerts), got {block!r}")
    return slug, name


def alert_destination(config: AlertsParams) -> tuple[NotificationBlock | None, str]:
    """The block to notify through and a description of it; (None, why not) when none is set up."""
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block

    url = os.environ.get(config.webhook_env, "") if config.webhook_env else ""
    if url:
        return webhook_block(url), f"the webhook in ${config.webhook_env}"
    if not config.block:
        return None, "alerts are off (alerts.block is empty and no webhook URL is in the environment)"
    block_slug_name(config.block)
    try:
        block = Block.load(config.block)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None, (f"no Prefect notification block {config.block} (create it with `art2mus alerts webhook URL`)"
                      + (f" and ${config.webhook_env} is unset" if config.webhook_env else ""))
    if not isinstance(block, NotificationBlock):
        raise Art2MusError(f"the Prefect block {config.block} is a {type(block).__name__}, not a notification block")
    return block, f"the Prefect block {config.block}"


def deliver(block: NotificationBlock, alert: Alert) -> None:
    """`block.notify` run to completion. It returns a coroutine where the block's notify is a plain `async def`
    (NotificationBlock declares it so) or where Prefect's async_dispatch finds an async context (a running
    event loop, an async flow); left unawaited, that coroutine would send nothing and raise nothing."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    sending = block.notify(alert.body, alert.subject)
    if inspect.iscoroutine(sending):
        run_coro_as_sync(sending)


def send_alert(alert: Alert, config: AlertsParams) -> str:
    """Deliver the alert; returns where it went. Raises Art2MusError when it could not be delivered."""
    try:
        block, destination = alert_destination(config)
    except (Art2MusError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - the API or the block could not be read
        raise Art2MusError(f"could not read the alert destination {config.block}: {error}") from None
    if block is None:
        raise Art2MusError(destination)
    try:
        deliver(block, alert)
    except Exception as error:  # noqa: BLE001 - network errors, HTTP errors, a misconfigured block
        raise Art2MusError(f"{destination} did not take the alert: {type(error).__name__}: {first_line(str(error))}") \
            from None
    return destination


def project_alerts(project: Path) -> AlertsParams:
    """The project's alerts settings; the defaults when params.yaml cannot be read (it may be why the run failed)."""
    try:
        return load_params(project / "params.yaml").alerts
    except Art2MusError:
        return AlertsParams()


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect `on_failure` / `on_crashed` hook: alert about the run; a delivery failure is only logged."""
    from prefect.logging.loggers import flow_run_logger

    run_logger = flow_run_logger(flow_run, flow)
    try:
        project = Path(str((flow_run.parameters or {}).get("project_dir", "."))).resolve()
        alert = compose_alert(flow, flow_run, state, project)
        destination = send_alert(alert, project_alerts(project))
    except Art2MusError as error:
        run_logger.error("alert not delivered: %s", error)
    except Exception as error:  # noqa: BLE001 - an alert must never mask the run's own failure
        run_logger.error("alert not delivered: %s: %s", type(error).__name__, error)
    else:
        run_logger.info("alert sent to %s: %s", destination, alert.subject)
