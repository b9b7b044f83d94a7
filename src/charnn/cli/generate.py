"""charnn generate: samples from a checkpoint, written as they are drawn, printed whole, as JSON, or the
best of N."""

import argparse
import dataclasses
import json
import math
import sys

from charnn.cli.flags import add_copy_min, add_device, add_precision, add_threads, apply_threads, checkpoint
from charnn.config import SampleConfig
from charnn.errors import ConfigError


def add_parser(commands) -> None:
    p = commands.add_parser("generate", help="generate text from a checkpoint", parents=[checkpoint()],
                            description="Generate text: the prime followed by --length new characters.")  # fmt: skip
    p.add_argument("--prime", default=None, help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=1000, help="new characters per sample (default: 1000)")
    p.add_argument("--temperature", default="0.8", help="0 = greedy; higher = more random; a comma-separated "
                   "list gives one labelled sample each (default: 0.8)")  # fmt: skip
    p.add_argument("--top-k", type=int, default=None, help="draw only from the K most likely characters")
    p.add_argument("--top-p", type=float, default=None, help="draw only from the most likely characters "
                   "whose probabilities sum to P")  # fmt: skip
    p.add_argument("--ban", metavar="CHARACTERS", help="never draw these characters: letters, ranges such as a-m, "
                   "classes [:alpha:] [:digit:] [:upper:] [:lower:] [:space:] [:punct:], escapes \\n \\- "
                   "(--ban e: a text without the letter e)")  # fmt: skip
    p.add_argument("--allow", metavar="CHARACTERS", help="draw only these characters, written as for --ban "
                   "(--allow 'a-m[:space:][:punct:]': the letters a to m, spaces and punctuation)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="random seed; the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="samples to draw (default: 1)")
    p.add_argument("--best-of", type=int, metavar="N", help="draw N samples and print the --num-samples of them "
                   "with the highest mean log-probability per character (scored by the model at temperature 1, "
                   "whatever --temperature drew them; best first)")  # fmt: skip
    p.add_argument("--require", action="append", default=[], metavar="PHRASE", help="a word or phrase every sample "
                   "must hold (again for more): where the model has not written it when it only just fits, it is "
                   "written then, so leave it room")  # fmt: skip
    p.add_argument("--within", type=int, metavar="N", help="with --require: the phrases appear within the first N "
                   "new characters (default: --length)")  # fmt: skip
    p.add_argument("--beam", type=int, metavar="N", help="beam search with N continuations: the most likely text "
                   "rather than a random one, the same every time (--temperature, --top-k, --top-p and --seed do "
                   "not apply; --num-samples prints that many of the N, most likely first)")  # fmt: skip
    p.add_argument("--length-penalty", type=float, metavar="A", help="with --beam: rank continuations by their "
                   "log-probability / characters ** A, so those a --stop ends early compete fairly with longer ones: "
                   "0 the plain sum (the default, which favours short texts), 1 the mean per character")  # fmt: skip
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end each sample (or beam "
                   "continuation) where it first writes TEXT, printed without it, as the server ends them (again for "
                   "more; escapes \\n \\t)")  # fmt: skip
    p.add_argument(
        "--stream",
        action="store_true",
        help="show each character as soon as it is drawn "
        "(one sample is written as it is drawn anyway, in blocks); several samples one after another",
    )
    p.add_argument("--json", action="store_true", help="print {samples, seed, checkpoint} as JSON (no prime), and "
                   "what each sample copied from the training text where its corpus is found (copies: the longest "
                   "span found verbatim, and the share of characters in spans of --copy-min or more)")  # fmt: skip
    add_copy_min(p)
    p.add_argument("--max-copied", type=float, metavar="SHARE", help="with --best-of: leave out samples whose "
                   "share of characters copied from the training text (in spans of --copy-min or more) is above "
                   "SHARE, e.g. 0 for none at all")  # fmt: skip
    add_device(p)
    add_threads(p)
    add_precision(p, "weights after the prime: fp32 gives the exact model; auto picks int8 where the CPU computes "
                  "it fast (default: auto)")  # fmt: skip
    p.set_defaults(run=run, renames={"min_length": "copy_min"})


def _temperatures(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise ConfigError(f"`temperature` takes a number or a comma-separated list, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from charnn.constraints import ban_bias, character_set
    from charnn.generation import check_options
    from charnn.hardware import resolve_device
    from charnn.limits import check_held
    from charnn.run_folder import load_checkpoint
    from charnn.sample import new_seed

    samplings = [SampleConfig(t, args.top_k, args.top_p) for t in _temperatures(args.temperature)]
    check_options(length=args.length, num_samples=args.num_samples, best_of=args.best_of, stream=args.stream,
                  beam=args.beam, max_copied=args.max_copied, require=tuple(args.require), within=args.within,
                  length_penalty=args.length_penalty, stop=_stops(args))  # fmt: skip
    held = _held_texts(args, len(samplings))
    if held:
        check_held(args.length, held)
    for spec in (args.ban, args.allow):
        character_set(spec or "")  # its spelling checked before the model is read
    apply_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint, resolve_device(args.device))
    if args.ban or args.allow is not None:
        bias = ban_bias(ckpt.vocab, ban=args.ban, allow=args.allow)
        samplings = [dataclasses.replace(s, logit_bias=bias) for s in samplings]
    prime = args.prime if args.prime is not None else _default_prime(ckpt.vocab)
    seed = args.seed if args.seed is not None else new_seed()
    if args.beam is not None:
        return _beam(args, ckpt, prime, samplings[0].logit_bias)
    labelled = len(samplings) > 1
    results = []  # (temperature, sample)
    means = []  # with --best-of: each printed sample's mean log-probability per character
    for number, sampling in enumerate(samplings):
        if args.best_of is not None:
            ranked = _best_of(args, ckpt, prime, sampling, seed)
            results += [(sampling.temperature, sample) for sample, _ in ranked]
            means += [mean for _, mean in ranked]
        elif not held:
            _write(args, ckpt, prime, sampling, seed, labelled, after=number > 0)
        else:
            results += [(sampling.temperature, s) for s in _samples(args, ckpt, prime, sampling, seed)]
    if args.json:
        out = {"samples": [s for _, s in results], "seed": seed, "checkpoint": str(ckpt.path)}
        out["temperatures"] = [t for t, _ in results]
        if args.best_of is not None:
            out["best_of"] = args.best_of
            out["mean_logprobs"] = [m if math.isfinite(m) else None for m in means]
        out |= _copies(ckpt, out["samples"], args.copy_min)
        print(json.dumps(out, ensure_ascii=False))
    elif held:
        blocks = [(f"--- temperature {t} ---\n" if labelled else "") + prime + s for t, s in results]
        print("\n\n".join(blocks))
    return 0


def _held_texts(args: argparse.Namespace, temperatures: int) -> int:
    """How many texts are held whole until printed; 0 where each sample is written as it is drawn
    (one at a time, or --stream), so that its length is bounded by nothing but time."""
    if args.beam is not None:
        return 0  # beam_search checks its own memory
    if args.json or args.best_of is not None:
        return temperatures * (args.best_of or args.num_samples)
    return 0 if args.stream or args.num_samples == 1 else temperatures * args.num_samples


def _beam(args, ckpt, prime: str, logit_bias) -> int:
    """The --num-samples most likely of the beam's continuations, most likely first."""
    from charnn.beam import beam_search

    found = beam_search(ckpt.model, ckpt.vocab, prime, length=args.length, width=args.beam, logit_bias=logit_bias,
                        stop=_stops(args), length_penalty=args.length_penalty or 0.0)  # fmt: skip
    kept = found.continuations[: args.num_samples]
    texts = [c.text for c in kept]
    if args.json:
        out = {"samples": texts, "beam": args.beam, "length_penalty": args.length_penalty or 0.0,
               "logprobs": [c.logprob for c in kept], "scores": [c.score for c in kept],
               "finish_reasons": [c.finish_reason for c in kept], "greedy_logprob": found.greedy.logprob,
               "greedy_score": found.greedy.score, "checkpoint": str(ckpt.path)}  # fmt: skip
        print(json.dumps(out | _copies(ckpt, texts, args.copy_min), ensure_ascii=False))
    else:
        print("\n\n".join(prime + text for text in texts))
    return 0


def _stops(args) -> tuple[str, ...]:
    from charnn.constraints import unescape

    return tuple(unescape(text) for text in args.stop)


def _samples(args, ckpt, prime: str, sampling: SampleConfig, seed: int) -> list[str]:
    from charnn.generation import generate_text

    return generate_text(ckpt.model, ckpt.vocab, prime, length=args.length, sampling=sampling,
                         num_samples=args.num_samples, seed=seed, precision=args.precision, stop=_stops(args),
                         **_required(args))  # fmt: skip


def _required(args) -> dict:
    return {"require": tuple(args.require), "within": args.within} if args.require else {}


def _best_of(args, ckpt, prime: str, sampling: SampleConfig, seed: int) -> list[tuple[str, float]]:
    """The --num-samples best of --best-of samples, best first, each with its mean log-probability."""
    from charnn.generation import generate_best_of

    ranked = generate_best_of(ckpt.model, ckpt.vocab, prime, args.length, sampling, best_of=args.best_of,
                              seed=seed, precision=args.precision, stop=_stops(args), **_required(args))  # fmt: skip
    order = ranked.order
    if args.max_copied is not None:
        from charnn.scoring.copies import index_of, not_copied

        kept = set(not_copied(index_of(ckpt), ranked.samples, args.max_copied, args.copy_min))
        order = [i for i in order if i in kept]
        if len(order) < args.num_samples:
            print(f"charnn: note: {len(order)} of {args.best_of} samples copied at most {args.max_copied:.0%} of their "
                  f"text; printing those", file=sys.stderr)  # fmt: skip
    return [(ranked.samples[i], ranked.mean_logprobs[i]) for i in order[: args.num_samples]]


def _write(args, ckpt, prime: str, sampling: SampleConfig, seed: int, labelled: bool, after: bool) -> None:
    """Each sample written as it is drawn, one after another (`after`: another block came before);
    with --stream, each character shown at once, else as standard output's buffer fills."""
    from charnn.generation import generate

    out = sys.stdout
    for i in range(args.num_samples):
        if after or i:
            out.write("\n")  # a blank line between samples, as when they are printed whole
        # Started before the prime is written, so that a note about the kernel comes before the text.
        steps = generate(ckpt.model, ckpt.vocab, prime, length=args.length, sampling=sampling, num_samples=1,
                         seed=seed, first_sample=i, precision=args.precision, **_required(args))  # fmt: skip
        if labelled:
            out.write(f"--- temperature {sampling.temperature} ---\n")
        out.write(prime)
        if args.stream:
            out.flush()
        _write_until_stop(out, (step[0] for step in steps), _stops(args), flush=args.stream)
        out.write("\n")
        out.flush()


def _write_until_stop(out, characters, stops: tuple[str, ...], flush: bool) -> None:
    """Write characters as they come, up to the first stop string (not written): the few that may
    begin one wait until it is clear they do not, and drawing ends there. Only those few are held,
    however long the text."""
    from charnn.generation import cut_at_stop, held_back

    pending = ""
    for character in characters:
        pending, stopped = cut_at_stop(pending + character, stops)
        if stopped:
            break
        ready = len(pending) - held_back(pending, stops)
        if ready:
            out.write(pending[:ready])
            pending = pending[ready:]
            if flush:
                out.flush()
    out.write(pending)


def _copies(ckpt, samples: list[str], min_length: int) -> dict:
    """{"copies": [each sample's copy report]}, or {"copies_unavailable": why} when the training text is
    not to be had (a checkpoint that names no corpus, or one no longer where it was)."""
    from charnn.errors import CharnnError
    from charnn.scoring.copies import index_of

    try:
        index = index_of(ckpt)  # the same index --max-copied used, if it did
    except CharnnError as error:
        return {"copies_unavailable": str(error)}
    return {"copies": [index.report(sample, min_length).to_dict() for sample in samples]}


def _default_prime(vocab) -> str:
    return "\n" if "\n" in vocab else vocab.characters[0]
