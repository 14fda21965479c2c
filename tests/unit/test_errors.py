"""Every error bridge exports, and every handler decision, survives pickling (it may cross a process
boundary: a multiprocessing pool, a test runner's worker) with its message and its attributes."""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

import bridge.errors
from bridge.errors import BridgeError, HandlerDecision, Problem, Violation

#: A plausible value for every constructor parameter of the classes in bridge.errors, by name. A
#: new parameter name fails the test until it is given one here, so no class escapes the check.
PLAUSIBLE: dict[str, Any] = {
    "message": "broker 127.0.0.1:9092 unreachable: check BRIDGE_KAFKA__BOOTSTRAP_SERVERS",
    "problems": [
        Problem("event-types-registry.json", "/events/lead.created/producer", "unknown domain 'marketing'"),
        Problem("schemas/lead.created.v1.json", "", "not valid JSON"),
    ],
    "mode": "backward",
    "event_type": "lead.created",
    "schema_version": 2,
    "what": "payload of lead.created v1",
    "violations": [Violation("/email", "'x' is not an 'email'", "/properties/email/format")],
    "event_id": "evt_0190a0b4-8a43-7c4a-9b51-3f9d3c2b1a01",
    "source": "sguild.lead.created[0]@42",
    "pointer": "/payload",
    "setting": "BRIDGE_DATABASE__URL",
    "code": "_TRANSPORT",
    "reason": "the coach left",
    "delay": 2.5,
}


def round_trip(error: BaseException, protocol: int = pickle.DEFAULT_PROTOCOL) -> Any:
    return pickle.loads(pickle.dumps(error, protocol=protocol))  # noqa: S301  # the bytes were made just now


def exported_classes() -> list[type[BaseException]]:
    """Every error and decision class bridge.errors exports (walking the module, not a list here)."""
    found = [
        value
        for name, value in vars(bridge.errors).items()
        if not name.startswith("_")
        and inspect.isclass(value)
        and issubclass(value, BridgeError | HandlerDecision)
        and value.__module__ == bridge.errors.__name__
    ]
    return sorted(found, key=lambda cls: cls.__name__)


def make(cls: type[BaseException]) -> BaseException:
    """An instance of ``cls`` with every parameter given (keyword-only and optional ones too)."""
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:  # Exception's own (*args): one message
            positional.append(PLAUSIBLE["message"])
        elif parameter.kind is parameter.VAR_KEYWORD:
            continue
        elif parameter.name not in PLAUSIBLE:
            raise AssertionError(f"{cls.__name__}({parameter.name}=…): give the test a plausible value for it")
        elif parameter.kind is parameter.KEYWORD_ONLY:
            keywords[parameter.name] = PLAUSIBLE[parameter.name]
        else:
            positional.append(PLAUSIBLE[parameter.name])
    return cls(*positional, **keywords)


def test_the_walk_finds_the_whole_tree():
    names = {cls.__name__ for cls in exported_classes()}
    assert len(names) >= 35
    # one of each kind: keyword-only attributes, lists of problems, decisions outside the tree
    assert {"KafkaError", "RegistryError", "ValidationError", "RetryLater", "DeadLetter", "SkipEvent"} <= names
    assert names <= set(bridge.errors.__all__)  # exported, not just defined


@pytest.mark.parametrize("cls", exported_classes(), ids=lambda cls: cls.__name__)
def test_every_error_and_decision_survives_pickling_with_its_message_and_attributes(cls):
    original = make(cls)
    attributes = {k: v for k, v in vars(original).items() if k != "_init_args"}

    for protocol in range(pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL + 1):
        copy = round_trip(original, protocol)

        assert type(copy) is cls
        assert str(copy) == str(original)
        assert copy.args == original.args
        assert {k: v for k, v in vars(copy).items() if k != "_init_args"} == attributes
        if isinstance(original, BridgeError):
            assert isinstance(copy, BridgeError)
            assert copy.retriable is original.retriable


def test_errors_built_from_structured_arguments_round_trip_by_value():
    """Plain ``Exception`` unpickling calls ``cls(*self.args)``, with the rendered message alone: an
    error built from a list of violations or with keyword-only parameters needs bridge's own
    ``__reduce__``. Check the values by name."""
    error = round_trip(bridge.errors.BrokerUnavailableError("no broker", code="_TRANSPORT", setting="X"))
    assert (error.code, error.setting, str(error)) == ("_TRANSPORT", "X", "no broker")
    invalid = round_trip(bridge.errors.ValidationError("payload", [Violation("/a", "required")], event_id="evt_1"))
    assert (invalid.event_id, invalid.violations) == ("evt_1", [Violation("/a", "required")])
    assert "event evt_1" in str(invalid)
    retry = round_trip(bridge.errors.RetryLater("busy", delay=4.0))
    assert (retry.reason, retry.delay) == ("busy", 4.0)
