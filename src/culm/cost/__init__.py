"""Cost in US dollars of what models were used for (see :mod:`culm.cost.prices`)."""

from culm.cost.prices import ModelPrice, Pricer, add_costs

__all__ = ["ModelPrice", "Pricer", "add_costs"]
