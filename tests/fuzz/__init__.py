"""Coverage-guided fuzzing harnesses for the wire codecs (run with ``python3 dev.py fuzz``).

One module per decoder (``dhcp_target``, ``tftp_target``, ``icmpv6_target``), each with a
``one_input(data)`` function that feeds *data* to the decoder and then to the code that
consumes the decoded value in the server.  The decoders' documented error,
:class:`~pxestack.errors.MalformedPacket`, is the expected outcome for garbage; any other
exception, or a broken round-trip invariant (an ``AssertionError``), is a finding.

:mod:`fuzz.run` runs one harness under atheris; ``tests/fuzz/test_harnesses.py`` runs every
``one_input`` over the seed corpus in the normal test suite so the harnesses cannot rot.
"""
