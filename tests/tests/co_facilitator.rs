//! A facilitator other than the group's creator invites someone: the newcomer's daemon
//! does not know its inviter as a member until the inviter's logs reach it, and must still
//! sync with it and find its own admission.

use hearth_tests::{Daemon, wait_for};

#[test]
fn a_co_facilitator_invites_and_the_newcomer_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Daemon::start("A", &tmp.path().join("a"));
    let f = Daemon::start("F", &tmp.path().join("f"));
    let j = Daemon::start("J", &tmp.path().join("j"));
    let group = a.create_group("Circle");
    a.invite(&f, &group);
    let f_id = f.member_id(&group);
    a.json(&["member", "role", &group, &f_id, "facilitator"]);
    wait_for("F to be a facilitator on its own device", || {
        f.json(&["member", "list", &group])
            .as_array()?
            .iter()
            .any(|m| m["you"] == true && m["role"] == "facilitator")
            .then_some(())
    });
    // A goes quiet: only F can bring J its admission.
    drop(a);
    f.invite(&j, &group);
    wait_for("J to see itself and the others", || {
        (j.json(&["member", "list", &group]).as_array()?.len() == 3).then_some(())
    });
    j.json(&["agreement", "add", &group, "from J"]);
    f.wait_for_agreements(&group, &["from J"]);
}
