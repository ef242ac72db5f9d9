"""Prices: the offline table's for known models, overrides from config, null for unknown."""

from __future__ import annotations

import pytest

from culm.cost import ModelPrice, Pricer, add_costs
from culm.domain.models import Usage
from culm.settings import Settings

USAGE = Usage(prompt_tokens=1000, completion_tokens=100, total_tokens=1100, cache_read_tokens=200)


def test_a_known_model_costs_what_the_price_table_says() -> None:
    # gpt-4o: $2.50 / M input, $1.25 / M cached input, $10 / M output.
    expected = (800 * 2.50 + 200 * 1.25 + 100 * 10.0) / 1_000_000
    assert Pricer().cost("openai:gpt-4o", USAGE) == pytest.approx(expected)
    # claude-sonnet-4: $3 / M input, $0.30 / M cache read, $3.75 / M cache write, $15 / M output.
    usage = Usage(prompt_tokens=5000, completion_tokens=200, cache_read_tokens=1000)
    usage = usage.model_copy(update={"cache_write_tokens": 3000})
    expected = (1000 * 3.0 + 1000 * 0.30 + 3000 * 3.75 + 200 * 15.0) / 1_000_000
    assert Pricer().cost("anthropic:claude-sonnet-4-20250514", usage) == pytest.approx(expected)


@pytest.mark.parametrize("model", ["openai:no-such-model-7", "scripted:demo", "local:llama", None])
def test_an_unknown_model_is_unpriced_never_free(model: str | None) -> None:
    pricer = Pricer()
    assert pricer.cost(model, USAGE) is None
    assert pricer.cost(model, Usage()) is None
    assert not pricer.priced(model)


def test_an_override_prices_each_usage_kind() -> None:
    price = ModelPrice(input=1.0, output=4.0, cache_read=0.5, cache_write=2.0, reasoning=8.0)
    pricer = Pricer({"local:llama": price, "openai:gpt-4o": ModelPrice(input=0, output=0)})
    usage = Usage(
        prompt_tokens=1000,
        completion_tokens=300,
        cache_read_tokens=100,
        cache_write_tokens=200,
        reasoning_tokens=50,
    )
    expected = (700 * 1.0 + 100 * 0.5 + 200 * 2.0 + 250 * 4.0 + 50 * 8.0) / 1_000_000
    assert pricer.cost("local:llama", usage) == pytest.approx(expected)
    assert pricer.cost("openai:gpt-4o", usage) == 0.0  # the override wins over the table
    assert pricer.priced("local:llama")


def test_overrides_come_from_config_models_tables() -> None:
    settings = Settings(models={"local:llama": {"price": {"input": 1.5, "output": 2}}})
    assert settings.price_overrides == {"local:llama": ModelPrice(input=1.5, output=2.0)}
    assert Settings().price_overrides == {}


def test_a_sum_with_an_unpriced_part_is_unknown() -> None:
    assert add_costs([0.5, 0.25]) == 0.75
    assert add_costs([]) == 0.0
    assert add_costs([0.5, None]) is None
