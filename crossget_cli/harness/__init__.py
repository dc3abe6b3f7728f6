"""Evaluation harnesses outside this package running CrossGET models: one module per
harness, each importing its harness (an optional dependency) itself; nothing in the
package imports them (:mod:`.lmms_eval`: an lmms-eval model plugin)."""
