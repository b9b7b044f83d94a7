"""What charnn score and charnn evaluate print for a reader: totals, the most surprising characters,
and the table of losses beside the baselines."""

import heapq
import math


class Surprises:
    """The few most surprising characters of a scored text, with where they are."""

    def __init__(self, keep: int = 5):
        self.keep = keep
        self.found: list = []
        self.line, self.column = 1, 1

    def add(self, record) -> None:
        if record.bits is not None:
            item = (record.bits, record.position, self.line, self.column, record)
            if len(self.found) < self.keep:
                heapq.heappush(self.found, item)
            elif item[0] > self.found[0][0]:
                heapq.heapreplace(self.found, item)
        self.line, self.column = (self.line + 1, 1) if record.character == "\n" else (self.line, self.column + 1)

    def worst(self) -> list:
        return sorted(self.found, key=lambda item: -item[0])


def print_score_summary(summary: dict, surprises: Surprises) -> None:
    print(f"checkpoint {summary['checkpoint']}, text: {summary['text']} ({summary['characters']:,} characters)")
    bpc = summary["bits_per_character"]
    if bpc is None:
        print("no character scored (the first character has nothing before it to be predicted from)")
    else:
        print(f"scored {summary['scored']:,} characters: {summary['bits']:,.1f} bits, {bpc:.4f} bits/char "
              f"({bpc * math.log(2):.4f} nats/char)")  # fmt: skip
    if summary["unknown_count"]:
        shown = ", ".join(repr(c) for c in summary["unknown"])
        print(f"left out {summary['unknown_count']:,} characters the model does not know: {shown}")
    worst = surprises.worst()
    if worst:
        print("most surprising:")
    for bits, _, line, column, record in worst:
        expected = ", ".join(f"{c!r} {p:.0%}" for c, p in record.alternatives[:3])
        print(f"  {record.character!r} at line {line}, column {column}: {bits:.2f} bits"
              + (f" (expected {expected})" if expected else ""))  # fmt: skip


def print_evaluation(report: dict, windows: int | None, dynamic_update: str | None) -> None:
    """evaluate_text's report as a table; `windows` and `dynamic_update` when those figures were asked for."""
    print(f"checkpoint {report['checkpoint']}, text: {report['text']} ({report['characters']:,} characters)")
    if report["unknown_characters"]:
        shown = ", ".join(repr(c) for c in report["unknown"])
        print(f"left out {report['unknown_characters']:,} characters the model does not know: {shown}")
    rows = [("model", "loss")]
    if windows is not None:
        rows.append((f"model, {windows}-char windows", "window_loss"))
    if dynamic_update is not None:
        rows.append((f"model, dynamic eval ({dynamic_update})", "dynamic_loss"))
    rows += [("Kneser-Ney 5-gram", "ngram_loss"), ("gzip -9", "gzip_loss")]
    width = max(22, *(len(label) + 2 for label, _ in rows))
    print(f"{'':<{width}}{'nats/char':>10}{'bits/char':>11}")
    for label, key in rows:
        print(f"{label:<{width}}{report[key]:>10.4f}{report[key] / math.log(2):>11.4f}")
    if windows is not None and "window_loss_after_8" in report:
        print(f"windows: {report['num_windows']:,} from zero state (seed {report['window_seed']}); first 8 characters "
              f"{report['window_loss_first_8']:.4f}, the rest {report['window_loss_after_8']:.4f}")  # fmt: skip
    invented = report["invented_words"]
    print(
        f"invented words: {report['invented_word_share']:.2%}" + (f" ({', '.join(invented[:10])})" if invented else "")
    )
    if "copies" in report:
        print(describe_copies(report["copies"]))


def describe_copies(copies: dict) -> str:
    """A copy report (`charnn.scoring.copies.CopyReport.to_dict()`) in one line."""
    longest = copies["longest"] or {"length": 0, "start": 0, "training_offset": 0}
    return (f"copied from the training text: longest span {longest['length']:,} characters (at {longest['start']:,}; "
            f"at {longest['training_offset']:,} there); {copies['share']:.1%} of the text in spans of "
            f"{copies['min_length']} characters or more")  # fmt: skip
