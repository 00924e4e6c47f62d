"""The values that cross llmbatch's ports: requests, stored entries, call outcomes, results, stats.

Plain data with no I/O. Import them from their modules (``llmbatch.model.entry`` and so on): this
package imports nothing on its own, so that importing one value never drags in the others.
"""
