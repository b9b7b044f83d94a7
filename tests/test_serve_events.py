"""The server's event plumbing on its own: coalescing a batch of job events, and the SSE framing."""

from charnn.serve.engine import JobDone, JobFailed, SampleFinished, SampleText
from charnn.serve.errors import error_body
from charnn.serve.events import as_sse, texts_coalesced


def test_each_samples_text_is_joined_before_its_finish():
    batch = [
        SampleText(0, "Pi"),
        SampleText(1, "你"),
        SampleText(0, "p"),
        SampleFinished(0, "stop"),
        SampleText(1, "好"),
        JobDone(),
    ]
    assert texts_coalesced(batch) == [SampleText(0, "Pip"), SampleFinished(0, "stop"), SampleText(1, "你好"), JobDone()]


def test_text_without_a_finish_comes_at_the_end_but_before_a_failure():
    assert texts_coalesced([SampleText(1, "“a"), SampleText(0, "b"), SampleText(1, "”")]) == [
        SampleText(1, "“a”"),
        SampleText(0, "b"),
    ]
    failed = JobFailed("generation failed")
    assert texts_coalesced([SampleText(0, "x"), failed]) == [SampleText(0, "x"), failed]


def test_an_event_is_compact_json_that_keeps_its_characters():
    assert as_sse({"text": "你好 “x”", "sample": 0}) == 'data: {"text":"你好 “x”","sample":0}\n\n'
    assert as_sse("[DONE]") == "data: [DONE]\n\n"
    assert as_sse(error_body(None, "boom", "server_error")) == (
        'data: {"error":{"field":null,"message":"boom","type":"server_error"}}\n\n'
    )
