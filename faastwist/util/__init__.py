"""Small helpers with no faastwist imports: field readers, units, timers, a body producer."""

from faastwist.util.bodyproducer import BytesProducer
from faastwist.util.fields import FieldError, FieldReader
from faastwist.util.timers import NamedTimers
from faastwist.util.units import UnitError, format_duration, parse_duration, parse_quantity, parse_size

__all__ = ["BytesProducer", "FieldError", "FieldReader", "NamedTimers", "UnitError",
           "format_duration", "parse_duration", "parse_quantity", "parse_size"]
