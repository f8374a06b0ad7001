"""The queue side: the Celery app, the job contract, the thin task and the producer API.

Kept free of imports so that producers load neither the worker nor aiobotocore.
"""
