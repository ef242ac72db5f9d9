"""The store conformance fixture (``store``, in tests/conftest.py): every test in
``test_store.py`` runs on each backend."""
