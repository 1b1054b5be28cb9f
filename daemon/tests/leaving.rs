//! Leaving a group leaves no record of it behind, spoken codes and invites included.

use hearthd::node::Node;
use hearthd::store::{Store, Table};

#[test]
fn leaving_deletes_the_groups_open_codes_and_invites() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::open(Store::open_unprotected(tmp.path()).unwrap()).unwrap();
    let group = node.create_group("Circle", "", None).unwrap();
    let other = node.create_group("Other", "", None).unwrap();
    node.open_code(&group, 600).unwrap();
    node.open_code(&other, 600).unwrap();
    assert_eq!(node.store().scan(Table::Invites, b"code").unwrap().len(), 2);
    node.forget_group(&group).unwrap();
    assert!(!node.has_group(&group));
    let left = node.store().scan(Table::Invites, b"code").unwrap();
    assert_eq!(
        left.len(),
        1,
        "the other group's code stays, this one's goes"
    );
    assert!(!left[0].1.windows(16).any(|w| w == group.as_bytes()));
}
