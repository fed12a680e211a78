//! Tests of the state machine: examples of each command, and properties over random logs.

use std::collections::BTreeMap;

use portico_proto::*;
use proptest::prelude::*;

use crate::state::*;

fn api(id: &str, body: &str, stages: &[(&str, Option<&str>, bool)]) -> Api {
    Api {
        id: id.to_string(),
        name: String::new(),
        description: String::new(),
        kind: ApiKind::Http,
        endpoint: Default::default(),
        region: None,
        routes: vec![Route {
            key: "GET /x".to_string(),
            integration: Integration {
                kind: IntegrationType::Mock,
                uri: None,
                method: None,
                timeout_ms: DEFAULT_INTEGRATION_TIMEOUT_MS,
                request_parameters: BTreeMap::new(),
                responses: Vec::new(),
                status: Some(200),
                headers: BTreeMap::new(),
                body: Some(body.to_string()),
            },
        }],
        gateway_responses: BTreeMap::new(),
        stages: stages
            .iter()
            .map(|(name, deployment, auto)| Stage {
                name: name.to_string(),
                description: String::new(),
                deployment: deployment.map(str::to_string),
                auto_deploy: *auto,
                variables: BTreeMap::new(),
            })
            .collect(),
    }
}

fn propose(command: Command) -> Proposal {
    Proposal {
        at_ms: 1_000,
        command,
    }
}

fn put(a: Api) -> Proposal {
    propose(Command::PutApi {
        api: a,
        if_revision: None,
    })
}

#[test]
fn deploy_pins_a_stage_and_apply_keeps_the_pin() {
    let mut s = State::default();
    assert_eq!(
        s.apply(1, &put(api("a", "v1", &[("prod", None, false)]))),
        Applied::Done { revision: 1 }
    );
    let deploy = propose(Command::Deploy {
        api: "a".into(),
        id: "d2".into(),
        description: "first".into(),
        stage: Some("prod".into()),
    });
    assert_eq!(s.apply(2, &deploy), Applied::Done { revision: 2 });
    assert_eq!(
        s.stage("a", "prod").unwrap().deployment.as_deref(),
        Some("d2")
    );
    // The file changes the definition but says nothing about the stage's deployment.
    s.apply(3, &put(api("a", "v2", &[("prod", None, false)])));
    assert_eq!(
        s.stage("a", "prod").unwrap().deployment.as_deref(),
        Some("d2")
    );
    let frozen = &s.deployments["a"]["d2"].value.snapshot.routes[0]
        .integration
        .body;
    assert_eq!(frozen.as_deref(), Some("v1"), "a deployment is immutable");
    assert_eq!(s.apis["a"].revision, 3);
}

#[test]
fn optimistic_concurrency_and_rejections_change_nothing() {
    let mut s = State::default();
    s.apply(1, &put(api("a", "v1", &[])));
    let before = s.clone();
    let stale = propose(Command::PutApi {
        api: api("a", "v2", &[]),
        if_revision: Some(7),
    });
    let Applied::Rejected {
        revision: 2,
        rejection,
    } = s.apply(2, &stale)
    else {
        panic!("conflict expected")
    };
    assert!(
        matches!(
            rejection,
            Rejection::Conflict {
                expected: 7,
                actual: 1,
                ..
            }
        ),
        "{rejection}"
    );
    assert_eq!(s.revision, 2);
    assert_eq!(s.apis, before.apis);
    let create_only = propose(Command::PutApi {
        api: api("a", "v2", &[]),
        if_revision: Some(0),
    });
    assert!(matches!(
        s.apply(3, &create_only),
        Applied::Rejected {
            rejection: Rejection::AlreadyExists { .. },
            ..
        }
    ));
    let ok = propose(Command::PutApi {
        api: api("a", "v2", &[]),
        if_revision: Some(1),
    });
    assert_eq!(s.apply(4, &ok), Applied::Done { revision: 4 });
}

#[test]
fn invalid_documents_are_rejected_whole_with_field_paths() {
    let mut s = State::default();
    s.apply(1, &put(api("keep", "v1", &[])));
    let mut bad = api("new", "v1", &[]);
    bad.routes[0].key = "GET nope".into();
    let doc = Document {
        apis: vec![api("ok", "v1", &[]), bad],
        deployments: vec![],
    };
    let Applied::Rejected {
        rejection: Rejection::Invalid(errors),
        ..
    } = s.apply(2, &propose(Command::ApplyDocument { document: doc }))
    else {
        panic!("invalid expected")
    };
    assert!(
        errors[0].starts_with("apis[1].routes[0].key:"),
        "{errors:?}"
    );
    assert!(
        !s.apis.contains_key("ok"),
        "nothing of a rejected document is applied"
    );
}

#[test]
fn a_document_naming_an_api_twice_is_rejected() {
    let mut s = State::default();
    let doc = Document {
        apis: vec![api("a", "v1", &[]), api("a", "v2", &[])],
        deployments: vec![],
    };
    let Applied::Rejected {
        rejection: Rejection::Invalid(errors),
        ..
    } = s.apply(1, &propose(Command::ApplyDocument { document: doc }))
    else {
        panic!("rejection expected")
    };
    assert!(errors[0].starts_with("apis[1].id:"), "{errors:?}");
    assert!(s.apis.is_empty());
}

#[test]
fn auto_deploy_records_every_definition_change() {
    let mut s = State::default();
    s.apply(1, &put(api("a", "v1", &[("live", None, true)])));
    assert_eq!(
        s.stage("a", "live").unwrap().deployment.as_deref(),
        Some("auto-1")
    );
    s.apply(2, &put(api("a", "v1", &[("live", None, true)])));
    assert_eq!(s.deployments["a"].len(), 1, "no change, no deployment");
    s.apply(3, &put(api("a", "v2", &[("live", None, true)])));
    assert_eq!(
        s.stage("a", "live").unwrap().deployment.as_deref(),
        Some("auto-3")
    );
    assert_eq!(s.deployments["a"].len(), 2);
    assert!(s.to_document().validate().is_ok());
}

#[test]
fn snapshots_round_trip_and_reject_garbage() {
    let mut s = State::default();
    s.apply(1, &put(api("a", "v1", &[("prod", None, false)])));
    let bytes = s.snapshot().unwrap();
    assert_eq!(State::restore(&bytes).unwrap(), s);
    assert!(State::restore(&bytes[..bytes.len() - 1]).is_err());
    assert!(State::restore(&[0xff; 16]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(State::restore(&longer).is_err());
}

fn command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["a", "b", "c"]);
    let body = prop::sample::select(vec!["one", "two"]);
    let stage = prop::sample::select(vec![
        ("prod", None, false),
        ("live", None, true),
        ("pinned", Some("d1"), false),
    ]);
    let revision = prop::option::of(prop::sample::select(vec![0u64, 1, 2, 5, 9]));
    prop_oneof![
        (
            id.clone(),
            body.clone(),
            prop::collection::vec(stage, 0..2),
            revision.clone()
        )
            .prop_map(|(id, body, stages, if_revision)| {
                let mut seen = Vec::new();
                let stages: Vec<_> = stages
                    .into_iter()
                    .filter(|s| {
                        let new = !seen.contains(&s.0);
                        seen.push(s.0);
                        new
                    })
                    .collect();
                Command::PutApi {
                    api: api(id, body, &stages),
                    if_revision,
                }
            }),
        (id.clone(), revision).prop_map(|(id, if_revision)| Command::DeleteApi {
            id: id.into(),
            if_revision
        }),
        (
            id.clone(),
            prop::sample::select(vec!["d1", "d2"]),
            prop::option::of(Just("prod"))
        )
            .prop_map(|(api, d, stage)| Command::Deploy {
                api: api.into(),
                id: d.into(),
                description: String::new(),
                stage: stage.map(str::to_string),
            }),
        (id.clone(), body).prop_map(|(id, body)| Command::ApplyDocument {
            document: Document {
                apis: vec![api(id, body, &[("prod", None, false)])],
                deployments: vec![]
            },
        }),
        prop::sample::select(vec!["t1", "t2"]).prop_map(|id| Command::CreateToken {
            token: TokenRecord {
                id: id.into(),
                name: "n".into(),
                role: Role::Viewer,
                secret_sha256: "ab".repeat(32)
            },
        }),
        prop::sample::select(vec!["t1", "t2"])
            .prop_map(|id| Command::DeleteToken { id: id.into() }),
    ]
}

fn replay(log: &[Command]) -> State {
    let mut s = State::default();
    for (i, c) in log.iter().enumerate() {
        s.apply(
            i as u64 + 1,
            &Proposal {
                at_ms: i as u64 * 10,
                command: c.clone(),
            },
        );
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn replay_and_snapshot_restore_give_the_same_digest(log in prop::collection::vec(command(), 0..40), split in 0usize..40) {
        let full = replay(&log);
        let split = split.min(log.len());
        let mut restored = State::restore(&replay(&log[..split]).snapshot().unwrap()).unwrap();
        for (i, c) in log.iter().enumerate().skip(split) {
            restored.apply(i as u64 + 1, &Proposal { at_ms: i as u64 * 10, command: c.clone() });
        }
        prop_assert_eq!(restored.digest(), full.digest());
        prop_assert_eq!(replay(&log).digest(), full.digest(), "two replicas of one log agree");
    }

    #[test]
    fn the_stored_world_is_always_valid_and_rejections_change_nothing(log in prop::collection::vec(command(), 0..40)) {
        let mut s = State::default();
        for (i, c) in log.iter().enumerate() {
            let before = s.clone();
            let index = i as u64 + 1;
            match s.apply(index, &Proposal { at_ms: 5, command: c.clone() }) {
                Applied::Rejected { .. } => {
                    let mut expected = before;
                    expected.revision = index;
                    prop_assert_eq!(&s, &expected);
                }
                Applied::Done { .. } => prop_assert!(s.to_document().validate().is_ok(), "{:?}", s.to_document().validate()),
            }
            prop_assert_eq!(s.revision, index);
        }
    }
}

/// Commands, with APIs in every endpoint mode (edges see different subsets of them).
fn command_with_modes() -> impl Strategy<Value = Command> {
    let mode = prop::sample::select(vec![
        (EndpointMode::Edge, None),
        (EndpointMode::Regional, Some("eu")),
        (EndpointMode::Regional, Some("us")),
        (EndpointMode::Private, None),
    ]);
    (command(), mode).prop_map(|(mut command, (endpoint, region))| {
        let apis: Vec<&mut Api> = match &mut command {
            Command::PutApi { api, .. } => vec![api],
            Command::ApplyDocument { document } => document.apis.iter_mut().collect(),
            _ => vec![],
        };
        for api in apis {
            api.endpoint = endpoint;
            api.region = region.map(str::to_string);
        }
        command
    })
}

fn filters() -> Vec<portico_proto::sync::EdgeFilter> {
    let filter = |region: &str, private_listener| portico_proto::sync::EdgeFilter {
        region: region.into(),
        private_listener,
    };
    vec![filter("eu", false), filter("us", true)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// What an edge holds after the changes since R equals a fresh snapshot, for every R it
    /// could be at and every filter: deltas lose nothing, leak nothing, and keep no garbage.
    #[test]
    fn changes_since_any_revision_equal_a_fresh_snapshot(log in prop::collection::vec(command_with_modes(), 1..40)) {
        use portico_proto::sync::EdgeView;
        use crate::sync::{edge_update, full_config};
        for filter in filters() {
            // The view an edge that followed every revision holds at each one.
            let mut state = State::default();
            let mut views = vec![EdgeView::default()];
            for (i, c) in log.iter().enumerate() {
                state.apply(i as u64 + 1, &Proposal { at_ms: 5, command: c.clone() });
                let view = EdgeView::default().apply(&full_config(&state, &filter)).unwrap();
                prop_assert!(view.to_document().validate().is_ok(), "{:?}", view.to_document().validate());
                for api in view.apis.values() {
                    prop_assert!(filter.admits(api), "{} leaked to {:?}", api.id, filter);
                }
                views.push(view);
            }
            let latest = views.last().unwrap().clone();
            for (since, view) in views.iter().enumerate() {
                let update = edge_update(&state, since as u64, &filter);
                let caught_up = view.apply(&update).unwrap();
                prop_assert_eq!(&caught_up, &latest, "from revision {}", since);
            }
        }
    }
}

#[test]
fn edges_enrol_with_edge_tokens_only_and_stay_recorded_when_revoked() {
    let mut s = State::default();
    let token = |id: &str, role| Command::CreateToken {
        token: TokenRecord {
            id: id.into(),
            name: "n".into(),
            role,
            secret_sha256: "ab".repeat(32),
        },
    };
    s.apply(1, &propose(token("edge", Role::Edge)));
    s.apply(2, &propose(token("view", Role::Viewer)));
    let enrol = |token_id: &str, region: &str| Command::EnrolEdge {
        region: region.into(),
        token_id: token_id.into(),
    };
    assert_eq!(
        s.apply(3, &propose(enrol("edge", "eu"))),
        Applied::Done { revision: 3 }
    );
    assert_eq!(s.edges["eu-3"].region, "eu");
    assert!(matches!(
        s.apply(4, &propose(enrol("view", "eu"))),
        Applied::Rejected { .. }
    ));
    assert!(matches!(
        s.apply(5, &propose(enrol("edge", "Bad Region"))),
        Applied::Rejected { .. }
    ));
    let remove = |id: &str| Command::RemoveEdge { id: id.into() };
    assert_eq!(
        s.apply(6, &propose(remove("eu-3"))),
        Applied::Done { revision: 6 }
    );
    assert_eq!(s.edges["eu-3"].revoked_at_ms, Some(1_000));
    assert!(matches!(
        s.apply(7, &propose(remove("eu-99"))),
        Applied::Rejected { .. }
    ));
}
