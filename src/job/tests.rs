//! Unit tests of the job contract: one good and one bad case per rule, with the exact refusal
//! message, plus the framing, the job id precedence, expiry and property tests.

use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A valid text job; each test changes one thing.
fn base() -> Value {
    json!({
        "page_id": "104857600000001",
        "job_id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "expires_at": "2026-11-22T10:00:00Z",
        "recipient": {"id": "6543210987654321"},
        "messaging_type": "UPDATE",
        "message": {"text": "Your order has shipped."},
        "notification_type": "REGULAR"
    })
}

fn decode_value(job: &Value) -> Result<Job, JobError> {
    Job::decode(job.to_string().as_bytes(), &DeliveryMeta::default())
}

/// `base()` with `edit` applied, decoded.
fn with(edit: impl FnOnce(&mut Map<String, Value>)) -> Result<Job, JobError> {
    let mut job = base();
    edit(job.as_object_mut().unwrap());
    decode_value(&job)
}

fn message(job: &mut Map<String, Value>) -> &mut Map<String, Value> {
    job["message"].as_object_mut().unwrap()
}

#[track_caller]
fn assert_refused(result: Result<Job, JobError>, expected: &str) {
    match result {
        Ok(job) => panic!("expected `{expected}`, got a valid job: {job:?}"),
        Err(e) => assert_eq!(e.to_string(), expected),
    }
}

#[track_caller]
fn assert_valid(result: Result<Job, JobError>) -> Job {
    result.unwrap_or_else(|e| panic!("expected a valid job, got `{e}`"))
}

// ===== framing =====

#[test]
fn body_limit_is_checked_before_parsing() {
    let ten_mb = vec![b'['; 10 * 1024 * 1024];
    assert_refused(
        Job::decode(&ten_mb, &DeliveryMeta::default()),
        "body: 10485760 bytes, limit is 262144",
    );

    let text = base().to_string();
    let pad = MAX_JOB_BYTES - text.len() - r#","pad":"""#.len();
    let at_limit = format!(
        "{},\"pad\":\"{}\"}}",
        &text[..text.len() - 1],
        "x".repeat(pad)
    );
    assert_eq!(at_limit.len(), MAX_JOB_BYTES);
    let job = assert_valid(Job::decode(at_limit.as_bytes(), &DeliveryMeta::default()));
    assert_eq!(job.send_body()["pad"].as_str().unwrap().len(), pad);
    let over = format!("{at_limit} ");
    assert_refused(
        Job::decode(over.as_bytes(), &DeliveryMeta::default()),
        "body: 262145 bytes, limit is 262144",
    );
}

#[test]
fn body_must_be_utf8() {
    let mut body = br#"{"page_id":"1","x":""#.to_vec();
    body.extend_from_slice(b"\xc3\x28\"}");
    assert_refused(
        Job::decode(&body, &DeliveryMeta::default()),
        "body: not UTF-8 (invalid byte at offset 20)",
    );
}

#[test]
fn body_must_be_json() {
    let meta = DeliveryMeta::default();
    assert_refused(
        Job::decode(b"", &meta),
        "body: not JSON: EOF while parsing a value at line 1 column 0",
    );
    assert_refused(
        Job::decode(br#"{"page_id": "1""#, &meta),
        "body: not JSON: EOF while parsing an object at line 1 column 15",
    );
    assert_refused(
        Job::decode(br#"{"a":1} {"b":2}"#, &meta),
        "body: not JSON: trailing characters at line 1 column 9",
    );
}

#[test]
fn body_must_be_an_object() {
    let meta = DeliveryMeta::default();
    for (body, found) in [
        (&b"[1,2]"[..], "an array"),
        (b"42", "a number"),
        (b"\"job\"", "a string"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ] {
        assert_refused(
            Job::decode(body, &meta),
            &format!("body: must be a JSON object, found {found}"),
        );
    }
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let depth = 100_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let err = Job::decode(deep.as_bytes(), &DeliveryMeta::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("body: not JSON: recursion limit exceeded"),
        "{err}"
    );
    let mut nested = json!("leaf");
    for _ in 0..200 {
        nested = json!({ "n": nested });
    }
    let err = with(|job| {
        job.insert("extra".into(), nested);
    })
    .unwrap_err();
    assert_eq!(err.field(), "body");
}

#[test]
fn content_type_is_json_when_given() {
    let body = base().to_string();
    let decode = |content_type| {
        Job::decode(
            body.as_bytes(),
            &DeliveryMeta {
                content_type: Some(content_type),
                ..DeliveryMeta::default()
            },
        )
    };
    for ok in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "application/json ; charset=\"utf-8\"",
    ] {
        assert_valid(decode(ok));
    }
    for (bad, shown) in [
        ("text/plain", r#""text/plain""#),
        ("", r#""""#),
        (
            "application/json; charset=latin1",
            r#""application/json; charset=latin1""#,
        ),
        (
            "application/json; charset=utf-8; x=y",
            r#""application/json; charset=utf-8; x=y""#,
        ),
        ("application/jsonx", r#""application/jsonx""#),
    ] {
        assert_refused(
            decode(bad),
            &format!("content_type: {shown} is not application/json"),
        );
    }
}

// ===== pagerelay fields =====

#[test]
fn page_id_is_required_digits_as_a_string() {
    assert_eq!(assert_valid(with(|_| {})).page_id, "104857600000001");
    let sixty_four = "9".repeat(64);
    assert_eq!(
        assert_valid(with(|job| {
            job.insert("page_id".into(), json!(sixty_four));
        }))
        .page_id,
        sixty_four
    );
    assert_refused(
        with(|job| {
            job.remove("page_id");
        }),
        "page_id: required",
    );
    assert_refused(
        with(|job| {
            job.insert("page_id".into(), json!(104857600000001u64));
        }),
        "page_id: must be a string of digits (ids as JSON numbers lose digits), found a number",
    );
    for (bad, shown) in [
        ("", r#""""#),
        ("12a", r#""12a""#),
        ("-1", r#""-1""#),
        ("١٢٣", r#""\u{661}\u{662}\u{663}""#),
    ] {
        assert_refused(
            with(|job| {
                job.insert("page_id".into(), json!(bad));
            }),
            &format!("page_id: {shown} is not 1 to 64 ASCII digits"),
        );
    }
    assert_refused(
        with(|job| {
            job.insert("page_id".into(), json!("1".repeat(65)));
        }),
        &format!(
            "page_id: \"{}…\" is not 1 to 64 ASCII digits",
            "1".repeat(40)
        ),
    );
}

#[test]
fn a_numeric_routing_key_must_be_the_page_id() {
    let body = base().to_string();
    let decode = |routing_key| {
        Job::decode(
            body.as_bytes(),
            &DeliveryMeta {
                routing_key,
                ..DeliveryMeta::default()
            },
        )
    };
    assert_valid(decode("104857600000001"));
    // Keys that are not Page ids are not compared: the pipeline routes by Page id, but a
    // publisher going through another exchange may use anything.
    assert_valid(decode(""));
    assert_valid(decode("jobs.eu"));
    assert_refused(
        decode("104857600000002"),
        r#"page_id: "104857600000001" does not match the routing key "104857600000002""#,
    );
}

#[test]
fn job_id_precedence_is_body_then_message_id_then_generated() {
    let with_id = base().to_string();
    let without_id = {
        let mut job = base();
        job.as_object_mut().unwrap().remove("job_id");
        job.to_string()
    };
    let meta = |message_id| DeliveryMeta {
        message_id,
        ..DeliveryMeta::default()
    };

    let job = assert_valid(Job::decode(with_id.as_bytes(), &meta(Some("amqp-id"))));
    assert_eq!(job.job_id, "0f8fad5b-d9cb-469f-a165-70867728950e");
    assert!(!job.job_id_generated);

    let job = assert_valid(Job::decode(without_id.as_bytes(), &meta(Some("amqp-id"))));
    assert_eq!(job.job_id, "amqp-id");
    assert!(!job.job_id_generated);

    for message_id in [None, Some("")] {
        let first = assert_valid(Job::decode(without_id.as_bytes(), &meta(message_id)));
        let second = assert_valid(Job::decode(without_id.as_bytes(), &meta(message_id)));
        assert!(first.job_id_generated);
        let uuid = uuid::Uuid::parse_str(&first.job_id).expect("a generated id is a UUID");
        assert_eq!(uuid.get_version_num(), 4);
        assert_ne!(first.job_id, second.job_id);
    }

    // A message_id that is used obeys the job id rules; one that is not used is not checked.
    assert_refused(
        Job::decode(without_id.as_bytes(), &meta(Some("tab\there"))),
        "message_id: character 4 is not printable ASCII (space to '~')",
    );
    assert_valid(Job::decode(with_id.as_bytes(), &meta(Some("tab\there"))));
}

#[test]
fn job_id_is_short_printable_ascii() {
    let set = |id: Value| {
        with(move |job| {
            job.insert("job_id".into(), id);
        })
    };
    assert_eq!(assert_valid(set(json!("a"))).job_id, "a");
    assert_valid(set(json!(" !~ order 17 ")));
    assert_valid(set(json!("x".repeat(200))));
    assert_refused(
        set(json!("x".repeat(201))),
        "job_id: 201 characters, limit is 200",
    );
    assert_refused(set(json!("")), "job_id: must not be empty");
    assert_refused(
        set(json!("naïve")),
        "job_id: character 3 is not printable ASCII (space to '~')",
    );
    assert_refused(
        set(json!("a\u{7f}")),
        "job_id: character 2 is not printable ASCII (space to '~')",
    );
    assert_refused(set(json!(17)), "job_id: must be a string, found a number");
    assert_refused(set(Value::Null), "job_id: must be a string, found null");
}

#[test]
fn expires_at_is_rfc3339() {
    let set = |at: &str| {
        let at = at.to_owned();
        with(move |job| {
            job.insert("expires_at".into(), json!(at));
        })
    };
    let utc = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
    for (text, at) in [
        ("2026-11-22T10:00:00Z", utc(2026, 11, 22, 10, 0, 0)),
        ("2026-11-22t10:00:00z", utc(2026, 11, 22, 10, 0, 0)),
        ("2026-11-22T12:30:00+02:30", utc(2026, 11, 22, 10, 0, 0)),
        ("2026-11-22T00:00:00-23:59", utc(2026, 11, 22, 23, 59, 0)),
        ("2028-02-29T10:00:00.5Z", utc(2028, 2, 29, 10, 0, 0)),
    ] {
        let job = assert_valid(set(text));
        assert_eq!(
            job.expires_at.unwrap().timestamp(),
            at.timestamp(),
            "{text}"
        );
    }
    for bad in [
        "tomorrow",
        "2026-11-22",
        "2026-11-22 10:00:00Z",
        "2026-11-22T10:00:00",
        "2026-11-22T10:00Z",
        "2026-11-22T10:00:00.Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:60:00Z",
        "2016-12-31T23:59:60Z",
        "2026-02-29T10:00:00Z",
        "2026-13-01T10:00:00Z",
        "2026-11-22T10:00:00+24:00",
        "2026-11-22T10:00:00+0200",
        "2026-11-22T10:00:00UTC",
        "２026-11-22T10:00:00Z",
    ] {
        assert_refused(
            set(bad),
            &format!(
                "expires_at: {} is not an RFC 3339 date-time like 2026-11-22T10:00:00Z",
                Quoted::new(bad)
            ),
        );
    }
    assert_refused(
        with(|job| {
            job.insert("expires_at".into(), json!(1_790_000_000));
        }),
        "expires_at: must be a string, found a number",
    );
}

#[test]
fn a_job_is_expired_from_its_instant_on() {
    let job = assert_valid(with(|_| {}));
    let at = Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
    assert!(!job.is_expired(at - chrono::Duration::nanoseconds(1)));
    assert!(job.is_expired(at));
    assert!(job.is_expired(at + chrono::Duration::days(1)));

    let forever = assert_valid(with(|job| {
        job.remove("expires_at");
    }));
    assert_eq!(forever.expires_at, None);
    assert!(!forever.is_expired(DateTime::<Utc>::MAX_UTC));
}

#[test]
fn credentials_are_refused_without_echoing_them() {
    for field in CREDENTIAL_FIELDS {
        let err = with(|job| {
            job.insert(field.to_string(), json!("EAAGsecretsecret"));
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{field}: Page access tokens never travel in jobs; they live in pagerelay's configuration"
            )
        );
        assert!(!format!("{err:?}").contains("EAAG"));
    }
    // Reported before anything else is wrong with the job.
    let err = decode_value(&json!({"access_token": "EAAGsecret"})).unwrap_err();
    assert_eq!(err.field(), "access_token");
    // Only the top level is the job's own credential; nested fields are content.
    assert_valid(with(|job| {
        message(job).insert("access_token".into(), json!("not ours to judge"));
    }));
}

// ===== Send API fields =====

#[test]
fn recipient_is_exactly_one_non_empty_string() {
    let set = |recipient: Value| {
        with(move |job| {
            job.insert("recipient".into(), recipient);
        })
    };
    for key in RECIPIENT_KEYS {
        let job = assert_valid(set(json!({ *key: "abc-123" })));
        assert_eq!(job.recipient, format!("{key}:abc-123"));
    }
    assert_refused(
        with(|job| {
            job.remove("recipient");
        }),
        "recipient: required",
    );
    assert_refused(
        set(json!("6543210987654321")),
        "recipient: must be an object, found a string",
    );
    assert_refused(
        set(json!({})),
        "recipient: exactly one of id, user_ref, comment_id, post_id, phone_number, \
         notification_messages_token or one_time_notif_token is required, found none",
    );
    assert_refused(
        set(json!({"user_ref": "u", "id": "1"})),
        "recipient: exactly one of id, user_ref, comment_id, post_id, phone_number, \
         notification_messages_token or one_time_notif_token is required, found id and user_ref",
    );
    assert_refused(
        set(json!({"id": "1", "psid": "1"})),
        "recipient: unknown key \"psid\", expected one of id, user_ref, comment_id, post_id, \
         phone_number, notification_messages_token, one_time_notif_token",
    );
    assert_refused(set(json!({"id": ""})), "recipient.id: must not be empty");
    assert_refused(
        set(json!({"id": 6543210987654321u64})),
        "recipient.id: must be a string (ids as JSON numbers lose digits), found a number",
    );
    assert_refused(
        set(json!({"user_ref": null})),
        "recipient.user_ref: must be a string (ids as JSON numbers lose digits), found null",
    );
}

#[test]
fn exactly_one_of_message_and_sender_action() {
    assert_refused(
        with(|job| {
            job.insert("sender_action".into(), json!("typing_on"));
        }),
        "message: exactly one of message or sender_action is required, found message and sender_action",
    );
    assert_refused(
        with(|job| {
            job.remove("message");
            job.remove("messaging_type");
        }),
        "message: exactly one of message or sender_action is required, found none",
    );
}

#[test]
fn sender_action_values() {
    for action in SENDER_ACTIONS {
        let job = assert_valid(with(|job| {
            job.remove("message");
            job.remove("messaging_type");
            job.insert("sender_action".into(), json!(action));
        }));
        assert!(!job.media);
    }
    // messaging_type is optional without a message, but still checked.
    assert_valid(with(|job| {
        job.remove("message");
        job.insert("sender_action".into(), json!("mark_seen"));
    }));
    let set = |action: Value| {
        with(move |job| {
            job.remove("message");
            job.remove("messaging_type");
            job.insert("sender_action".into(), action);
        })
    };
    assert_refused(
        set(json!("typing")),
        r#"sender_action: "typing" is not one of typing_on, typing_off, mark_seen"#,
    );
    assert_refused(
        set(json!("TYPING_ON")),
        r#"sender_action: "TYPING_ON" is not one of typing_on, typing_off, mark_seen"#,
    );
    assert_refused(
        set(json!(["typing_on"])),
        "sender_action: must be a string, found an array",
    );
}

#[test]
fn message_is_an_object_with_exactly_one_of_text_and_attachment() {
    assert_refused(
        with(|job| {
            job.insert("message".into(), json!("hi"));
        }),
        "message: must be an object, found a string",
    );
    assert_refused(
        with(|job| {
            job.insert("message".into(), json!({}));
        }),
        "message: exactly one of text or attachment is required, found none",
    );
    assert_refused(
        with(|job| {
            message(job).insert(
                "attachment".into(),
                json!({"type": "image", "payload": {"url": "https://example.com/a.png"}}),
            );
        }),
        "message: exactly one of text or attachment is required, found text and attachment",
    );
}

#[test]
fn text_has_fewer_than_2000_characters() {
    let set = |text: Value| {
        with(move |job| {
            message(job).insert("text".into(), text);
        })
    };
    assert_valid(set(json!("x")));
    assert_valid(set(json!("x".repeat(1999))));
    // UTF-16 code units, not bytes: 999 four-byte emoji and a letter are 1999 units, fine;
    // 1000 emoji are 2000 units, as many as a platform counting UTF-16 refuses.
    assert_valid(set(json!(format!("{}x", "🚚".repeat(999)))));
    assert_valid(set(json!("€".repeat(1999))));
    assert_refused(
        set(json!("🚚".repeat(1000))),
        "message.text: 2000 UTF-16 code units (1000 characters; emoji and other characters \
         outside the Basic Multilingual Plane count twice), limit is 1999",
    );
    assert_refused(
        set(json!("x".repeat(2000))),
        "message.text: 2000 characters, limit is 1999",
    );
    assert_refused(
        set(json!("é".repeat(2001))),
        "message.text: 2001 characters, limit is 1999",
    );
    assert_refused(set(json!("")), "message.text: must not be empty");
    assert_refused(
        set(json!(42)),
        "message.text: must be a string, found a number",
    );
}

#[test]
fn metadata_has_fewer_than_1000_characters() {
    let set = |metadata: Value| {
        with(move |job| {
            message(job).insert("metadata".into(), metadata);
        })
    };
    assert_valid(set(json!("")));
    assert_valid(set(json!("m".repeat(999))));
    assert_refused(
        set(json!("m".repeat(1000))),
        "message.metadata: 1000 characters, limit is 999",
    );
    assert_refused(
        set(json!({"id": 1})),
        "message.metadata: must be a string, found an object",
    );
}

#[test]
fn at_most_13_quick_replies() {
    let reply = json!({"content_type": "text", "title": "Yes", "payload": "YES"});
    let set = |replies: Value| {
        with(move |job| {
            message(job).insert("quick_replies".into(), replies);
        })
    };
    assert_valid(set(json!([])));
    assert_valid(set(Value::Array(vec![reply.clone(); 13])));
    assert_refused(
        set(Value::Array(vec![reply.clone(); 14])),
        "message.quick_replies: 14 items, limit is 13",
    );
    assert_refused(
        set(json!(reply)),
        "message.quick_replies: must be an array, found an object",
    );
    assert_refused(
        set(json!([reply, "No"])),
        "message.quick_replies[1]: must be an object, found a string",
    );
}

#[test]
fn attachments_have_a_known_type_and_a_payload() {
    let set = |attachment: Value| {
        with(move |job| {
            job.insert("message".into(), json!({ "attachment": attachment }));
        })
    };
    for kind in ATTACHMENT_TYPES {
        let job = assert_valid(set(
            json!({"type": kind, "payload": {"url": "https://example.com/f"}}),
        ));
        assert_eq!(job.media, *kind == "audio" || *kind == "video", "{kind}");
    }
    assert_refused(
        set(json!({"type": "sticker", "payload": {}})),
        r#"message.attachment.type: "sticker" is not one of audio, file, image, template, video"#,
    );
    assert_refused(
        set(json!({"type": "IMAGE", "payload": {}})),
        r#"message.attachment.type: "IMAGE" is not one of audio, file, image, template, video"#,
    );
    assert_refused(
        set(json!({"payload": {}})),
        "message.attachment.type: required",
    );
    assert_refused(
        set(json!({"type": "image"})),
        "message.attachment.payload: required",
    );
    assert_refused(
        set(json!({"type": "image", "payload": "https://example.com/a.png"})),
        "message.attachment.payload: must be an object, found a string",
    );
    assert_refused(
        set(json!([{"type": "image"}])),
        "message.attachment: must be an object, found an array",
    );
}

#[test]
fn messaging_type_is_required_with_a_message() {
    for kind in ["RESPONSE", "UPDATE", "UTILITY"] {
        assert_valid(with(|job| {
            job.insert("messaging_type".into(), json!(kind));
        }));
    }
    assert_refused(
        with(|job| {
            job.remove("messaging_type");
        }),
        "messaging_type: required when message is present",
    );
    assert_refused(
        with(|job| {
            job.insert("messaging_type".into(), json!("update"));
        }),
        r#"messaging_type: "update" is not one of RESPONSE, UPDATE, MESSAGE_TAG, UTILITY"#,
    );
    assert_refused(
        with(|job| {
            job.insert(
                "messaging_type".into(),
                json!("NON_PROMOTIONAL_SUBSCRIPTION"),
            );
        }),
        r#"messaging_type: "NON_PROMOTIONAL_SUBSCRIPTION" is not one of RESPONSE, UPDATE, MESSAGE_TAG, UTILITY"#,
    );
}

#[test]
fn tag_goes_with_message_tag_and_only_with_it() {
    for tag in MESSAGE_TAGS {
        assert_valid(with(|job| {
            job.insert("messaging_type".into(), json!("MESSAGE_TAG"));
            job.insert("tag".into(), json!(tag));
        }));
    }
    assert_refused(
        with(|job| {
            job.insert("messaging_type".into(), json!("MESSAGE_TAG"));
        }),
        "tag: required when messaging_type is MESSAGE_TAG",
    );
    assert_refused(
        with(|job| {
            job.insert("messaging_type".into(), json!("MESSAGE_TAG"));
            job.insert("tag".into(), json!("SHIPPING_UPDATE"));
        }),
        r#"tag: "SHIPPING_UPDATE" is not one of ACCOUNT_UPDATE, CONFIRMED_EVENT_UPDATE, CUSTOMER_FEEDBACK, HUMAN_AGENT, POST_PURCHASE_UPDATE"#,
    );
    assert_refused(
        with(|job| {
            job.insert("tag".into(), json!("HUMAN_AGENT"));
        }),
        "tag: allowed only when messaging_type is MESSAGE_TAG",
    );
    assert_refused(
        with(|job| {
            job.remove("message");
            job.remove("messaging_type");
            job.insert("sender_action".into(), json!("typing_on"));
            job.insert("tag".into(), Value::Null);
        }),
        "tag: allowed only when messaging_type is MESSAGE_TAG",
    );
}

#[test]
fn notification_type_values() {
    for kind in NOTIFICATION_TYPES {
        assert_valid(with(|job| {
            job.insert("notification_type".into(), json!(kind));
        }));
    }
    assert_valid(with(|job| {
        job.remove("notification_type");
    }));
    assert_refused(
        with(|job| {
            job.insert("notification_type".into(), json!("LOUD"));
        }),
        r#"notification_type: "LOUD" is not one of REGULAR, SILENT_PUSH, NO_PUSH"#,
    );
    assert_refused(
        with(|job| {
            job.insert("notification_type".into(), Value::Null);
        }),
        "notification_type: must be a string, found null",
    );
}

#[test]
fn long_values_are_truncated_in_messages() {
    let long = "Q".repeat(10_000);
    let err = with(|job| {
        job.insert("messaging_type".into(), json!(long));
    })
    .unwrap_err()
    .to_string();
    assert!(err.len() < 200, "{err}");
    assert!(err.contains(&format!("\"{}…\"", "Q".repeat(40))), "{err}");
}

// ===== the send body =====

#[test]
fn send_body_keeps_unknown_fields_in_order_without_pagerelay_fields() {
    let text = r#"{
        "zeta": 1,
        "page_id": "1",
        "recipient": {"id": "2"},
        "persona_id": "77",
        "job_id": "j",
        "messaging_type": "UPDATE",
        "message": {"text": "hi", "future_field": {"b": 1, "a": 2}},
        "expires_at": "2030-01-01T00:00:00Z",
        "alpha": [true, null]
    }"#;
    let job = assert_valid(Job::decode(text.as_bytes(), &DeliveryMeta::default()));
    assert_eq!(
        serde_json::to_string(job.send_body()).unwrap(),
        r#"{"zeta":1,"recipient":{"id":"2"},"persona_id":"77","messaging_type":"UPDATE","message":{"text":"hi","future_field":{"b":1,"a":2}},"alpha":[true,null]}"#
    );
    assert_eq!(job.recipient, "id:2");
    assert!(!job.media);
}

#[test]
fn map_body_changes_the_body_and_keeps_everything_else() {
    let text = r#"{"page_id": "1", "job_id": "j", "expires_at": "2030-01-01T00:00:00Z",
        "recipient": {"user_ref": "u"}, "messaging_type": "UPDATE",
        "message": {"attachment": {"type": "video", "payload": {"url": "https://x"}}}}"#;
    let job = assert_valid(Job::decode(text.as_bytes(), &DeliveryMeta::default()));
    let fields = job.send_body().len();
    let mapped = job.clone().map_body(|body| body.len());
    assert_eq!(*mapped.send_body(), fields);
    assert_eq!(
        (
            mapped.page_id.as_str(),
            mapped.job_id.as_str(),
            mapped.recipient.as_str()
        ),
        (
            job.page_id.as_str(),
            job.job_id.as_str(),
            job.recipient.as_str()
        )
    );
    assert_eq!(mapped.expires_at, job.expires_at);
    assert_eq!(mapped.job_id_generated, job.job_id_generated);
    assert!(mapped.media);
}

#[test]
fn a_repeated_key_keeps_its_first_place_and_its_last_value() {
    // As `serde_json::Value` reads an object, pagerelay fields included; the escaped key is the
    // same key as the plain one.
    let text = r#"{
        "page_id": "9",
        "alpha": 1,
        "recipient": {"id": "2"},
        "job_id": "first",
        "messaging_type": "UPDATE",
        "message": {"text": "hi"},
        "\u0061lpha": 2,
        "page_id": "104857600000001",
        "job_\u0069d": "last",
        "omega": null
    }"#;
    let job = assert_valid(Job::decode(text.as_bytes(), &DeliveryMeta::default()));
    assert_eq!(job.page_id, "104857600000001");
    assert_eq!(job.job_id, "last");
    assert_eq!(
        serde_json::to_string(job.send_body()).unwrap(),
        r#"{"alpha":2,"recipient":{"id":"2"},"messaging_type":"UPDATE","message":{"text":"hi"},"omega":null}"#
    );
}

#[test]
fn a_body_that_is_not_an_object_is_still_read_whole() {
    // A syntax error after the first value is a syntax error, not "found an array".
    assert_refused(
        Job::decode(b"[1, 1e400]", &DeliveryMeta::default()),
        "body: not JSON: number out of range at line 1 column 9",
    );
    assert_refused(
        Job::decode(b"[1, {\"a\": }]", &DeliveryMeta::default()),
        "body: not JSON: expected value at line 1 column 11",
    );
}

// ===== properties =====

/// Any JSON value, a few levels deep.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// The keys the contract knows at the top level; unknown fields are drawn outside this set.
const KNOWN: &[&str] = &[
    "page_id",
    "job_id",
    "expires_at",
    "recipient",
    "messaging_type",
    "tag",
    "message",
    "sender_action",
    "notification_type",
    "access_token",
    "appsecret_proof",
];

/// The message of a valid job and whether it is media.
fn valid_message() -> impl Strategy<Value = (Value, bool)> {
    // At most 999 characters: even all outside the BMP, that is under 1999 UTF-16 units.
    let text = "\\PC{1,999}".prop_map(|text| (json!({ "text": text }), false));
    let attachment = (prop::sample::select(ATTACHMENT_TYPES), "[a-z]{1,10}").prop_map(
        |(kind, file)| {
            (
                json!({"attachment": {"type": kind, "payload": {"url": format!("https://example.com/{file}")}}}),
                MEDIA_ATTACHMENT_TYPES.contains(&kind),
            )
        },
    );
    (
        prop_oneof![text, attachment],
        // Metadata: at most 499 characters, under 999 UTF-16 units even outside the BMP.
        prop::option::of("\\PC{0,499}"),
        prop::option::of(0..=MAX_QUICK_REPLIES),
    )
        .prop_map(|((mut message, media), metadata, replies)| {
            let fields = message.as_object_mut().unwrap();
            if let Some(metadata) = metadata {
                fields.insert("metadata".into(), json!(metadata));
            }
            if let Some(n) = replies {
                let reply = json!({"content_type": "text", "title": "Yes", "payload": "Y"});
                fields.insert("quick_replies".into(), Value::Array(vec![reply; n]));
            }
            (message, media)
        })
}

/// A valid job as ordered (key, value) pairs, with the media flag and recipient key it implies.
fn valid_job() -> impl Strategy<Value = (Vec<(String, Value)>, bool, String)> {
    let send = prop_oneof![
        (
            valid_message(),
            prop::sample::select(MESSAGING_TYPES),
            prop::sample::select(MESSAGE_TAGS),
        )
            .prop_map(|((message, media), kind, tag)| {
                let mut fields = vec![
                    ("message".to_owned(), message),
                    ("messaging_type".to_owned(), json!(kind)),
                ];
                if kind == "MESSAGE_TAG" {
                    fields.push(("tag".to_owned(), json!(tag)));
                }
                (fields, media)
            }),
        prop::sample::select(SENDER_ACTIONS)
            .prop_map(|action| (vec![("sender_action".to_owned(), json!(action))], false)),
    ];
    (
        "[0-9]{1,64}",
        prop::option::of("[ -~]{1,200}"),
        prop::option::of(0i64..4_000_000_000),
        (prop::sample::select(RECIPIENT_KEYS), "\\PC{1,30}"),
        send,
        prop::option::of(prop::sample::select(NOTIFICATION_TYPES)),
        prop::collection::vec(
            (
                "[a-z_]{1,12}".prop_filter("unknown", |k| !KNOWN.contains(&k.as_str())),
                arbitrary_json(),
            ),
            0..4,
        ),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(page_id, job_id, expires, (kind, who), (send, media), notification, extra, seed)| {
                let mut fields = vec![
                    ("page_id".to_owned(), json!(page_id)),
                    ("recipient".to_owned(), json!({ kind: who })),
                ];
                if let Some(job_id) = job_id {
                    fields.push(("job_id".to_owned(), json!(job_id)));
                }
                if let Some(seconds) = expires {
                    let at = DateTime::from_timestamp(seconds, 0).unwrap();
                    fields.push(("expires_at".to_owned(), json!(at.to_rfc3339())));
                }
                fields.extend(send);
                if let Some(notification) = notification {
                    fields.push(("notification_type".to_owned(), json!(notification)));
                }
                for (key, value) in extra {
                    if !fields.iter().any(|(k, _)| *k == key) {
                        fields.push((key, value));
                    }
                }
                // Rotate so the pagerelay fields are not always first.
                let by = seed.index(fields.len());
                fields.rotate_left(by);
                (fields, media, format!("{kind}:{who}"))
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..512),
        routing_key in "[0-9a-z]{0,3}",
        message_id in prop::option::of(".{0,8}"),
        content_type in prop::option::of("[a-z/;= ]{0,20}"),
    ) {
        let meta = DeliveryMeta {
            routing_key: &routing_key,
            message_id: message_id.as_deref(),
            content_type: content_type.as_deref(),
        };
        let _ = Job::decode(&body, &meta);
    }

    /// The one-pass reader of the top-level object agrees with reading the body as a
    /// `serde_json::Value` and taking the pagerelay fields out of it, on JSON-ish text with
    /// repeated and escaped keys, syntax errors and bodies that are not objects.
    #[test]
    fn the_body_reads_as_a_json_value_reads(
        text in r#"\{("(page_id|job_id|a|\\u0061|b)": ?("1"|"x"|[0-9]{1,3}|1e400|\[|\{"c":1\}|null),? ?){0,6}\}?|\[1,? ?\]|"s"|-?[0-9]e?"#
    ) {
        let reference = serde_json::from_str::<Value>(&text);
        let decoded = Job::decode(text.as_bytes(), &DeliveryMeta::default());
        match reference {
            Err(e) => prop_assert_eq!(
                decoded.unwrap_err().to_string(),
                format!("body: not JSON: {e}")
            ),
            Ok(Value::Object(mut job)) => {
                let page_id = job.shift_remove("page_id");
                let job_id = job.shift_remove("job_id");
                job.shift_remove("expires_at");
                match decoded {
                    Ok(decoded) => {
                        prop_assert_eq!(Some(Value::from(decoded.page_id.clone())), page_id);
                        prop_assert_eq!(Some(Value::from(decoded.job_id.clone())), job_id);
                        prop_assert_eq!(
                            serde_json::to_string(decoded.send_body()).unwrap(),
                            serde_json::to_string(&job).unwrap()
                        );
                    }
                    // The same refusal as the reference's fields would get.
                    Err(e) => {
                        let mut fields = job.clone();
                        if let Some(page_id) = page_id {
                            fields.insert("page_id".into(), page_id);
                        }
                        if let Some(job_id) = job_id {
                            fields.insert("job_id".into(), job_id);
                        }
                        let again = Job::decode(
                            Value::Object(fields).to_string().as_bytes(),
                            &DeliveryMeta::default(),
                        );
                        prop_assert_eq!(e.to_string(), again.unwrap_err().to_string());
                    }
                }
            }
            Ok(other) => prop_assert_eq!(
                decoded.unwrap_err().to_string(),
                format!("body: must be a JSON object, found {}", JsonKind::of(&other))
            ),
        }
    }

    #[test]
    fn decoding_arbitrary_json_never_panics(value in arbitrary_json()) {
        let _ = decode_value(&value);
    }

    #[test]
    fn valid_jobs_decode_to_their_send_body((fields, media, recipient) in valid_job()) {
        let input: Map<String, Value> = fields.iter().cloned().collect();
        let body = serde_json::to_vec(&input).unwrap();
        let job = Job::decode(&body, &DeliveryMeta::default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;

        let mut expected = input.clone();
        for field in PAGERELAY_FIELDS {
            expected.shift_remove(*field);
        }
        // Compared as text so that key order counts, at every level.
        prop_assert_eq!(
            serde_json::to_string(job.send_body()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
        prop_assert_eq!(&job.page_id, input["page_id"].as_str().unwrap());
        match input.get("job_id") {
            Some(id) => prop_assert_eq!(Some(job.job_id.as_str()), id.as_str()),
            None => prop_assert!(job.job_id_generated),
        }
        prop_assert_eq!(
            job.expires_at.map(|t| t.to_rfc3339()),
            input.get("expires_at").and_then(Value::as_str).map(str::to_owned)
        );
        prop_assert_eq!(job.media, media);
        prop_assert_eq!(job.recipient, recipient);
    }
}
