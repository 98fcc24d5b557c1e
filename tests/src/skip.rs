//! What a test does when something it needs from the machine is missing (a validator, python,
//! RabbitMQ's own binaries): say `SKIPPED` and pass on a developer's machine, but fail under CI
//! or strict mode, where a test that checks nothing must not pass for one that did.

/// The environment variable that makes a missing tool fail the test (`scripts/test` sets it
/// when `CI` is set).
pub const STRICT_VAR: &str = "WARREN_STRICT_TESTS";

/// Whether a missing tool fails the test: `WARREN_STRICT_TESTS` or `CI` set to anything but
/// empty, `0` or `false`.
pub fn strict() -> bool {
    let var = |name| std::env::var(name).ok();
    strict_from(var(STRICT_VAR).as_deref(), var("CI").as_deref())
}

fn strict_from(flag: Option<&str>, ci: Option<&str>) -> bool {
    let on = |v: Option<&str>| {
        v.map(str::trim)
            .is_some_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    on(flag) || on(ci)
}

/// Reports that the test cannot check `what` because of `why`. Under [`strict`] mode it
/// panics, failing the test; otherwise it prints `SKIPPED` (to stdout and stderr, so it shows
/// with or without output capture) and the caller returns without checking anything.
pub fn skip_or_fail(what: &str, why: &str) {
    assert!(
        !strict(),
        "cannot check {what}: {why} (a missing tool fails the run under CI=true or {STRICT_VAR}=1)"
    );
    eprintln!("SKIPPED: {what}: {why}");
    println!("SKIPPED: {what}: {why}");
}

#[cfg(test)]
mod tests {
    use super::strict_from;

    #[test]
    fn ci_or_the_flag_makes_a_missing_tool_fail() {
        assert!(!strict_from(None, None));
        for off in ["", " ", "0", "false", "FALSE"] {
            assert!(!strict_from(Some(off), Some(off)), "{off:?}");
        }
        for on in ["1", "true", "True", "yes"] {
            assert!(strict_from(Some(on), None), "flag {on:?}");
            assert!(strict_from(None, Some(on)), "CI={on:?}");
        }
        assert!(strict_from(Some("0"), Some("true")));
    }
}
