"""Render the device catalog as the Markdown tables of docs/wire-contract.md, so the doc cannot drift."""

from devices.catalog import KINDS


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


def render_catalog_markdown() -> str:
    """One section per kind: its channel, and each quantity's unit, range and whether required."""
    out: list[str] = []
    for name, model in KINDS.items():
        spec = model.channel
        if spec is None:
            channel = "no channel"
        else:
            allowed = f" ({', '.join(spec.allowed)})" if spec.allowed else ""
            channel = f"channel `{spec.tag}`{allowed}"
        out += [
            f"### `{name}` ({model.domain.value}, {channel})",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| quantity | unit | min | max | required |",
            "| --- | --- | --- | --- | --- |",
        ]
        for q in model.quantities():
            unit = "one of " + ", ".join(q.states) if q.states else q.unit
            out.append(
                f"| `{q.name}` | {unit} | {_number(q.minimum)} | {_number(q.maximum)} "
                f"| {'yes' if q.required else 'no'} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render_catalog_markdown(), end="")
