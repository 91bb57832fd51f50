"""faastwist.util's names load on first use (PEP 562): importing one helper module does
not import Twisted."""

from __future__ import annotations

import subprocess
import sys

import pytest

import faastwist.util as util


def test_every_public_name_loads_from_its_home() -> None:
    from faastwist.util import bodyproducer, fields, ports, timers, times, units

    homes = {"BytesProducer": bodyproducer, "FieldError": fields, "FieldReader": fields,
             "free_port": ports, "port_is_free": ports, "NamedTimers": timers,
             "format_rfc3339": times, "parse_rfc3339": times, "UnitError": units,
             "format_duration": units, "parse_duration": units, "parse_quantity": units,
             "parse_size": units}
    assert util.__all__ == sorted(homes)
    for name, module in homes.items():
        assert getattr(util, name) is getattr(module, name), name
        assert util.__dict__[name] is getattr(module, name)   # cached after first use


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError) as caught:
        util.no_such_helper  # noqa: B018
    assert str(caught.value) == "module 'faastwist.util' has no attribute 'no_such_helper'"


def test_a_helper_module_alone_does_not_import_twisted() -> None:
    code = ("import sys, faastwist.util.times, faastwist.util\n"
            "faastwist.util.parse_rfc3339\n"
            "print('twisted' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.strip() == "False"
