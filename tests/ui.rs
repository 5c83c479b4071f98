//! Compile-time behaviour of `state_machine!`: every check's error, at the offending
//! token, and the machines that must compile.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
