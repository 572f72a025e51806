//! Mailboxes on the fleet database (`mail`): each change locks the owners'
//! `peers` rows `FOR NO KEY UPDATE` (in the one order of
//! [`tx::lock_peers`]), loads the mailboxes into the domain's `Inbox`, runs
//! the domain functions exactly as the file store does (same checks, same
//! order, same events) and writes the difference.
//!
//! A mailbox is one row per item of its `Inbox`, in order of `seq`: a
//! waiting message, a received one (`Kept`), a sent one, a dropped id, a
//! send time. The domain only ever appends items, removes them and changes
//! them in place, so new rows (new `seq`) keep the order. An item's `id` is
//! its message id (the dropped id, the send time); the n-th repeat of one
//! within a box gets `#n` (two sends in one millisecond).

use crate::db::{Db, Failure};
use crate::links;
use crate::registry;
use crate::supervisor::Hint;
use crate::tx::{self, Tx};
use memoryd_core::peers::{self, Draft, Inbox, Kept, Limits, Message, OutboxRow};
use memoryd_core::presence::Event;
use memoryd_core::store::StoreError;
use memoryd_proto::Timestamp;
use memoryd_proto::event::rfc3339;
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;
use tokio_postgres::GenericClient;

const WAITING: &str = "waiting";
const RECEIVED: &str = "received";
const SENT: &str = "sent";
const DROPPED: &str = "dropped";
const SENDS: &str = "sends";

/// A mailbox as loaded, with the row of each item, to write the
/// difference.
#[derive(Debug, Default)]
struct Stored {
    inbox: Inbox,
    rows: HashMap<(String, String), (i64, Value)>,
}

fn body<T: serde::Serialize>(item: &T) -> Result<Value, Failure> {
    serde_json::to_value(item).map_err(|e| tx::internal(format!("a mailbox item does not serialize: {e}")))
}

/// The rows of `inbox`, in order: (box, id, body).
fn items(inbox: &Inbox) -> Result<Vec<(&'static str, String, Value)>, Failure> {
    let mut out = Vec::new();
    for m in &inbox.messages {
        out.push((WAITING, m.id.clone(), body(m)?));
    }
    for k in &inbox.received {
        out.push((RECEIVED, k.message.id.clone(), body(k)?));
    }
    for m in &inbox.sent {
        out.push((SENT, m.id.clone(), body(m)?));
    }
    for id in &inbox.dropped {
        out.push((DROPPED, id.clone(), body(id)?));
    }
    for t in &inbox.sends {
        out.push((SENDS, rfc3339::format(t.time()), body(t)?));
    }
    let mut seen: HashMap<(&'static str, String), usize> = HashMap::new();
    for (b, id, _) in &mut out {
        let n = seen.entry((*b, id.clone())).or_default();
        if *n > 0 {
            id.push_str(&format!("#{n}"));
        }
        *n += 1;
    }
    Ok(out)
}

fn parse<T: serde::de::DeserializeOwned>(who: &str, id: &str, body: Value) -> Result<T, Failure> {
    serde_json::from_value(body)
        .map_err(|e| tx::internal(format!("the item {id} of {who}'s mailbox does not load: {e}; it is kept as it is")))
}

/// The mailboxes of `names`, each whole (a name with no rows: empty).
async fn load(client: &impl GenericClient, names: &[&str]) -> Result<BTreeMap<String, Stored>, Failure> {
    let rows = client
        .query("SELECT personality, seq, box, id, body FROM mail WHERE personality = ANY($1) ORDER BY seq", &[&names])
        .await?;
    let mut out: BTreeMap<String, Stored> = names.iter().map(|n| ((*n).to_owned(), Stored::default())).collect();
    for r in rows {
        let (who, seq, b, id, value): (String, i64, String, String, Value) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let stored = out.entry(who.clone()).or_default();
        let inbox = &mut stored.inbox;
        match b.as_str() {
            WAITING => inbox.messages.push(parse(&who, &id, value.clone())?),
            RECEIVED => inbox.received.push(parse::<Kept>(&who, &id, value.clone())?),
            SENT => inbox.sent.push(parse(&who, &id, value.clone())?),
            DROPPED => inbox.dropped.push(parse(&who, &id, value.clone())?),
            _ => inbox.sends.push(parse::<Timestamp>(&who, &id, value.clone())?),
        }
        stored.rows.insert((b, id), (seq, value));
    }
    Ok(out)
}

/// Writes what changed between the stored mailbox and `after`: removed
/// items deleted, changed ones updated in place, new ones appended in
/// order.
async fn write(tx: &Tx<'_>, who: &str, before: &Stored, after: &Inbox) -> Result<(), Failure> {
    let mut kept = HashSet::new();
    let (mut upd_seq, mut upd_body) = (Vec::new(), Vec::new());
    let (mut new_box, mut new_id, mut new_body) = (Vec::new(), Vec::new(), Vec::new());
    for (b, id, value) in items(after)? {
        match before.rows.get(&(b.to_owned(), id.clone())) {
            Some((seq, old)) => {
                kept.insert(*seq);
                if *old != value {
                    upd_seq.push(*seq);
                    upd_body.push(value);
                }
            }
            None => {
                new_box.push(b);
                new_id.push(id);
                new_body.push(value);
            }
        }
    }
    let gone: Vec<i64> = before.rows.values().map(|(seq, _)| *seq).filter(|s| !kept.contains(s)).collect();
    if !gone.is_empty() {
        tx.execute("DELETE FROM mail WHERE seq = ANY($1)", &[&gone]).await?;
    }
    if !upd_seq.is_empty() {
        tx.execute(
            "UPDATE mail SET body = u.body FROM unnest($1::bigint[], $2::jsonb[]) AS u(seq, body) WHERE mail.seq = u.seq",
            &[&upd_seq, &upd_body],
        )
        .await?;
    }
    if !new_box.is_empty() {
        tx.execute(
            "INSERT INTO mail (personality, box, id, body)
             SELECT $1, u.b, u.i, u.j FROM unnest($2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY AS u(b, i, j, n)
              ORDER BY u.n",
            &[&who, &new_box, &new_id, &new_body],
        )
        .await?;
    }
    Ok(())
}

/// The working copies of locked mailboxes: loaded, changed by the domain,
/// written back.
struct Boxes(BTreeMap<String, (Stored, Inbox)>);

impl Boxes {
    async fn load(tx: &Tx<'_>, names: &[&str]) -> Result<Boxes, Failure> {
        Ok(Boxes(
            load(&**tx, names)
                .await?
                .into_iter()
                .map(|(who, stored)| {
                    let working = stored.inbox.clone();
                    (who, (stored, working))
                })
                .collect(),
        ))
    }

    fn get(&mut self, who: &str) -> &mut Inbox {
        &mut self.0.entry(who.to_owned()).or_insert_with(|| (Stored::default(), Inbox::default())).1
    }

    async fn write(&self, tx: &Tx<'_>) -> Result<(), Failure> {
        for (who, (stored, after)) in &self.0 {
            if stored.inbox != *after {
                write(tx, who, stored, after).await?;
            }
        }
        Ok(())
    }
}

/// Ends a change: its events, a hint per changed inbox, the commit.
async fn finish(tx: Tx<'_>, db: &Db, events: &[Event], inboxes: &[&str]) -> Result<(), Failure> {
    crate::events::insert(&tx, &db.host_id, events).await?;
    for p in inboxes {
        crate::supervisor::notify(&tx, &db.settings.schema, &Hint::Inbox { personality: (*p).to_owned() }).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `peer.send` inside its transaction (the file store's `send_held`): the
/// checks against the registry and the links, the sender's rate, every
/// recipient's inbox, then the sender's history.
async fn send_in(tx: Tx<'_>, db: &Db, message: &Message, limits: &Limits, now: SystemTime) -> Result<Sent, Failure> {
    let to: Vec<&str> = message.to.iter().map(String::as_str).collect();
    let mut owners = to.clone();
    if !message.operator {
        owners.push(&message.from);
    }
    tx::lock_peers(&tx, &owners).await?;
    let fleet = registry::in_tx(&tx, &db.host_id).await?;
    if message.operator {
        for t in &to {
            peers::check_known(Some(&fleet), t, false)?;
        }
    } else {
        let links = links::between_locked(&tx, &message.from, &to).await?;
        for t in &to {
            peers::check_visible(&links, &fleet, &message.from, t)?;
        }
    }
    let mut boxes = Boxes::load(&tx, &owners).await?;
    if !message.operator {
        boxes.get(&message.from).check_rate(&message.from, limits, now)?;
    }
    let mut recipients = Vec::new();
    let mut events = Vec::new();
    for t in &to {
        let (queued, e) = boxes.get(t).queue(t, message.clone(), limits, now);
        recipients.push(queued);
        events.extend(e);
    }
    if !message.operator {
        boxes.get(&message.from).record_sent(message, limits, now);
    }
    boxes.write(&tx).await?;
    crate::db::pause_point("send").await;
    finish(tx, db, &events, &to).await?;
    Ok(peers::sent(message, recipients))
}

pub async fn send(db: &Db, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    let now = db.db_time(now);
    let message = peers::compose(draft, now)?;
    db.call(db.settings.call_timeout, async |c| -> Result<Sent, Failure> {
        send_in(c.transaction().await?, db, &message, limits, now).await
    })
    .await
}

/// A send to the sender of a message `p.from` received, in its thread.
/// The original is read before the locks: a received message never
/// changes but for its acknowledgement.
pub async fn reply(db: &Db, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    peers::check_name(&p.from)?;
    let now = db.db_time(now);
    db.call(db.settings.call_timeout, async |c| -> Result<Sent, Failure> {
        let tx = c.transaction().await?;
        let mailbox = load(&*tx, &[&p.from]).await?.remove(&p.from).unwrap_or_default().inbox;
        let original = &mailbox.received_message(&p.message_id)?.message;
        let message = peers::compose(&Draft::reply(&p.from, original, &p.message, p.ack_required)?, now)?;
        send_in(tx, db, &message, limits, now).await
    })
    .await
}

/// The messages waiting for `p`, read without a lock.
async fn waiting_of(client: &impl GenericClient, p: &str) -> Result<Inbox, Failure> {
    let rows = client
        .query("SELECT id, body FROM mail WHERE personality = $1 AND box = $2 ORDER BY seq", &[&p, &WAITING])
        .await?;
    let mut inbox = Inbox::default();
    for r in rows {
        inbox.messages.push(parse(p, r.get(0), r.get(1))?);
    }
    Ok(inbox)
}

pub async fn inbox(db: &Db, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    peers::check_name(p)?;
    let now = db.db_time(now);
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        Ok(waiting_of(&**c, p).await?.free(now, false))
    })
    .await
}

pub async fn lease(db: &Db, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    peers::check_name(p)?;
    let now = db.db_time(now);
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        // Every hook asks, and most find nothing: a look without the lock
        // spares them the row lock's write.
        if waiting_of(&**c, p).await?.free(now, urgent_only).is_empty() {
            return Ok(Vec::new());
        }
        let tx = c.transaction().await?;
        tx::lock_peers(&tx, &[p]).await?;
        let mut boxes = Boxes::load(&tx, &[p]).await?;
        let taken = boxes.get(p).lease(now, urgent_only);
        boxes.write(&tx).await?;
        tx.commit().await?;
        Ok(taken)
    })
    .await
}

pub async fn ack(db: &Db, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError> {
    peers::check_name(p)?;
    let now = db.db_time(now);
    db.call(db.settings.call_timeout, async |c| -> Result<usize, Failure> {
        let tx = c.transaction().await?;
        tx::lock_peers(&tx, &[p]).await?;
        let mut boxes = Boxes::load(&tx, &[p]).await?;
        let (n, events) = boxes.get(p).deliver(p, ids, limits, now);
        boxes.write(&tx).await?;
        let changed: &[&str] = if n > 0 { &[p] } else { &[] };
        crate::db::pause_point("ack").await;
        finish(tx, db, &events, changed).await?;
        Ok(n)
    })
    .await
}

/// The receipt is queued for the sender in the same transaction as the
/// state moves, once (its id is fixed by the original).
pub async fn acknowledge(
    db: &Db,
    p: &str,
    id: &str,
    limits: &Limits,
    now: SystemTime,
) -> Result<Acknowledged, StoreError> {
    peers::check_name(p)?;
    let now = db.db_time(now);
    db.call(db.settings.call_timeout, async |c| -> Result<Acknowledged, Failure> {
        let tx = c.transaction().await?;
        // Whom a receipt would go to, to lock both mailboxes in order.
        let look = load(&*tx, &[p]).await?.remove(p).unwrap_or_default().inbox;
        let original = look.acknowledgeable(id)?.message.clone();
        let sender = original.from.as_str();
        let owners: Vec<&str> = if original.operator { vec![p] } else { vec![p, sender] };
        tx::lock_peers(&tx, &owners).await?;
        let mut boxes = Boxes::load(&tx, &owners).await?;
        let kept = boxes.get(p).acknowledgeable(id)?.clone();
        let receipt = match kept.acknowledged_at {
            None => peers::receipt(p, &kept.message, now),
            Some(_) => None,
        };
        let sent_receipt = receipt.is_some();
        let mut events = Vec::new();
        if let Some(receipt) = receipt {
            events.extend(boxes.get(sender).queue(sender, receipt, limits, now).1);
        }
        let (changed, e) = boxes.get(p).acknowledge(p, id, now)?;
        events.extend(e);
        boxes.write(&tx).await?;
        let notified: &[&str] = if sent_receipt { &[sender] } else { &[] };
        finish(tx, db, &events, notified).await?;
        Ok(Acknowledged { message_id: id.to_owned(), acknowledged: changed, receipt: sent_receipt })
    })
    .await
}

pub async fn outbox(db: &Db, p: &str, limit: Option<usize>) -> Result<Vec<OutboxRow>, StoreError> {
    peers::check_name(p)?;
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        // One snapshot for the sender's history and its recipients'.
        let tx = c
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let sender = load(&*tx, &[p]).await?.remove(p).unwrap_or_default().inbox;
        let recipients = peers::outbox_recipients(&sender, limit);
        let names: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let mailboxes: BTreeMap<String, Inbox> =
            load(&*tx, &names).await?.into_iter().map(|(who, s)| (who, s.inbox)).collect();
        tx.commit().await?;
        Ok(peers::outbox(&sender, limit, |to| mailboxes.get(to)))
    })
    .await
}

pub async fn mailbox(db: &Db, p: &str) -> Result<Inbox, StoreError> {
    peers::check_name(p)?;
    db.call(db.settings.call_timeout, async |c| -> Result<Inbox, Failure> {
        Ok(load(&**c, &[p]).await?.remove(p).unwrap_or_default().inbox)
    })
    .await
}

pub async fn waiting(db: &Db) -> Result<BTreeMap<String, usize>, StoreError> {
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        let rows =
            c.query("SELECT personality, count(*) FROM mail WHERE box = $1 GROUP BY personality", &[&WAITING]).await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), usize::try_from(r.get::<_, i64>(1)).unwrap_or(0))).collect())
    })
    .await
}

/// Every mailbox, loaded with its real types (for `check`): how many.
pub async fn check_all(client: &impl GenericClient) -> Result<usize, Failure> {
    let rows = client.query("SELECT DISTINCT personality FROM mail", &[]).await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(load(client, &names).await?.len())
}

/// Appends the items of `inbox` that `p`'s stored mailbox does not have
/// yet (for `store import`): how many messages were waiting among them.
pub async fn import(tx: &Tx<'_>, p: &str, inbox: &Inbox) -> Result<usize, Failure> {
    let mut boxes = Boxes::load(tx, &[p]).await?;
    let target = boxes.get(p);
    let known: HashSet<(&'static str, String)> = items(target)?.into_iter().map(|(b, id, _)| (b, id)).collect();
    let mut merged = target.clone();
    let mut waiting = 0;
    for m in &inbox.messages {
        if !known.contains(&(WAITING, m.id.clone())) {
            merged.messages.push(m.clone());
            waiting += 1;
        }
    }
    for k in &inbox.received {
        if !known.contains(&(RECEIVED, k.message.id.clone())) {
            merged.received.push(k.clone());
        }
    }
    for m in &inbox.sent {
        if !known.contains(&(SENT, m.id.clone())) {
            merged.sent.push(m.clone());
        }
    }
    for d in &inbox.dropped {
        if !known.contains(&(DROPPED, d.clone())) {
            merged.dropped.push(d.clone());
        }
    }
    *target = merged;
    boxes.write(tx).await?;
    Ok(waiting)
}
