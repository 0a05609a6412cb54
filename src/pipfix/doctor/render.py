"""Human output of a doctor report: grouped, wrapped for an 80-column terminal."""

from __future__ import annotations

import textwrap
from typing import Any

from .findings import GROUPS, DoctorReport, Fact, Finding, Severity

WIDTH = 80
_LABEL_WIDTH = 22
_MAX_LIST = 6


def _wrap(text: str, indent: str, first: str | None = None) -> list[str]:
    return textwrap.wrap(
        text, WIDTH, initial_indent=first if first is not None else indent,
        subsequent_indent=indent, break_on_hyphens=False, break_long_words=False,
    ) or [first or indent]


def _value(value: Any) -> str:
    if value is None or value == []:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_value(v)}" for k, v in value.items())
    return str(value)


def _fact_lines(fact: Fact) -> list[str]:
    value = fact.value
    if isinstance(value, list) and len(value) > _MAX_LIST:
        value = [*value[:2], f"... {len(value) - 3} more ...", value[-1]]
    text = f"{_value(value)} [{fact.source}]"
    indent = " " * (_LABEL_WIDTH + 2)
    if len(fact.label) >= _LABEL_WIDTH:
        return [f"  {fact.label}", *_wrap(text, indent)]
    return _wrap(text, indent, f"  {fact.label:<{_LABEL_WIDTH}}")


def _evidence_lines(evidence: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for key, value in evidence.items():
        one_per_line = isinstance(value, list) and any(
            not isinstance(v, str) or " " in v.strip() for v in value)
        if one_per_line:
            lines += _wrap(f"{key}:", "      ")
            for item in value[:_MAX_LIST]:
                lines += _wrap(_value(item).strip(), "          ", "        - ")
            if len(value) > _MAX_LIST:
                lines.append(f"        ... {len(value) - _MAX_LIST} more (see --json)")
        elif isinstance(value, list) and len(value) > _MAX_LIST:
            shown = ", ".join(value[:_MAX_LIST]) + f" ... {len(value) - _MAX_LIST} more"
            lines += _wrap(f"{key}: {shown}", "        ", "      ")
        else:
            lines += _wrap(f"{key}: {_value(value)}", "        ", "      ")
    return lines


def _finding_lines(finding: Finding) -> list[str]:
    head = f"  {finding.severity.value.upper():<7} {finding.id} [{finding.source}]"
    lines = [head]
    lines += _wrap(finding.summary, "      ")
    if finding.explanation:
        lines += _wrap(f"why: {finding.explanation}", "           ", "      ")
    lines += _evidence_lines(finding.evidence)
    if finding.action:
        lines += _wrap(f"do: {finding.action}", "          ", "      ")
    return lines


def render(report: DoctorReport) -> str:
    target = report.target
    live = report.live
    lines = [f"pipfix doctor: {target.get('prefix')} (Python {target.get('version')})"]
    lines.append(f"  executable: {target.get('executable') or '(not found)'}")
    if live.get("available"):
        lines += _wrap("facts: [static] from files, [live] from running the target, "
                       "[host] from this machine", "    ", "  ")
    else:
        lines += _wrap(f"facts: [static] from files and [host] only; the target was not run: "
                       f"{live.get('reason')}", "    ", "  ")
    for group, title in GROUPS.items():
        facts = [f for f in report.facts if f.group == group]
        findings = [f for f in report.findings if f.group == group]
        if not facts and not findings:
            continue
        lines += ["", title, "-" * len(title)]
        for fact in facts:
            lines += _fact_lines(fact)
        for finding in findings:
            lines += _finding_lines(finding)
    counts = {s: sum(1 for f in report.findings if f.severity is s) for s in Severity}
    lines += ["", f"{counts[Severity.ERROR]} error(s), {counts[Severity.WARNING]} warning(s), "
              f"{counts[Severity.INFO]} info: exit {report.exit_code}"]
    return "\n".join(lines) + "\n"
