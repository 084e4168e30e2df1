import platform

from t2t.runtime import keep_freed_memory


def test_keep_freed_memory_reports_whether_glibc_took_the_settings():
    # mallopt exists only in glibc; elsewhere the call must say it did nothing rather than fail.
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
