"""Small helpers with no faastwist imports: field readers, units, RFC 3339 times, timers,
a body producer, loopback ports, a supervised child server (supervised, imported by name)."""

from faastwist.util.bodyproducer import BytesProducer
from faastwist.util.fields import FieldError, FieldReader
from faastwist.util.ports import free_port, port_is_free
from faastwist.util.timers import NamedTimers
from faastwist.util.times import format_rfc3339, parse_rfc3339
from faastwist.util.units import UnitError, format_duration, parse_duration, parse_quantity, parse_size

__all__ = ["BytesProducer", "FieldError", "FieldReader", "NamedTimers", "UnitError",
           "format_duration", "format_rfc3339", "free_port", "parse_duration", "parse_quantity",
           "parse_rfc3339", "parse_size", "port_is_free"]
