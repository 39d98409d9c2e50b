"""The integration apps, on workers that carry far delayed messages forward and delete
released delay records at once: ``kourier worker tests.chaos.carrying:SERVICES``.

Messages due more than 3 s ahead wait as offsets; a delay partition 200 records past its
oldest pending message carries that message forward; deletions run every second.
"""

from streams.engine import delay
from streams.kafka import trim
from tests.integration.apps import SERVICES

delay.HORIZON = 3.0
delay.LEAD = 1.0
delay.CARRY_AFTER = 200
trim.TRIM_EVERY = 1.0
trim.TRIM_LEAST = 1

__all__ = ["SERVICES"]
