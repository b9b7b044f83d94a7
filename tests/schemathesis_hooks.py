"""What the request schemas cannot say, said to schemathesis (`SCHEMATHESIS_HOOKS`), so that it sends no
request the server rightly refuses as a valid one.

JSON Schema compares a field with constants, never with another field. The server's rules that
compare two, each a 422 that names why (tests/test_serve_constraints.py): a required phrase may not
use a character that ban, allow or logit_bias bans, the phrases must fit in `within`, and `within`
and the phrases in the characters asked for. (And ban with allow in /v1/completions, a rule its
schema could say but leaves out: one condition more and schemathesis cannot explore it.)
"""

import schemathesis

DEFAULT_LENGTH = {"/v1/generate": 200, "/v1/completions": 16}  # schemas.DEFAULT_NEW_CHARS, OpenAI's 16


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@schemathesis.hook
def filter_body(context, body) -> bool:
    if not isinstance(body, dict) or context.operation is None:
        return True
    if context.operation.path == "/v1/completions" and body.get("ban") is not None and body.get("allow") is not None:
        return False  # the one rule completions' schema leaves out (schemas._rules says why); a 422
    phrases = body.get("require")
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        return True
    path = context.operation.path
    length = body.get("max_new_chars" if path == "/v1/generate" else "max_tokens", DEFAULT_LENGTH.get(path))
    banned, allowed, bias = body.get("ban"), body.get("allow"), body.get("logit_bias")
    used = set("".join(phrases))
    if isinstance(banned, list) and used & set(banned) or isinstance(allowed, list) and used - set(allowed):
        return False
    if isinstance(bias, dict) and any(_number(value) and value <= -100 for value in bias.values()):
        return False  # which characters it bans, only the model's vocabulary says
    bounds = [n for n in (body.get("within"), length) if _number(n)]
    return all(sum(map(len, phrases)) <= n for n in bounds) and bounds == sorted(bounds)
