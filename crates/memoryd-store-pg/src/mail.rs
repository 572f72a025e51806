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
//!
//! Every lock order of spec 80 holds but one: a send also locks its
//! sender's row (its history and send times change with the recipients'
//! inboxes), and an acknowledgement its receipt's recipient's. All of them
//! are taken in one statement, in name order, which keeps two sends in
//! opposite directions from deadlocking.

use crate::db::{Db, Failure, Skew};
use crate::links;
use crate::registry;
use crate::supervisor::Hint;
use crate::tx::{self, Tx};
use memoryd_core::fleet::FleetMap;
use memoryd_core::peers::{self, Draft, Inbox, Kept, Limits, Links, Message, OutboxRow};
use memoryd_core::presence::{Event, Refusal};
use memoryd_core::store::StoreError;
use memoryd_proto::Timestamp;
use memoryd_proto::event::rfc3339;
use memoryd_proto::peers::{Acknowledged, ReplyParams, Sent};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};
use tokio_postgres::GenericClient;

const WAITING: &str = "waiting";
const RECEIVED: &str = "received";
const SENT: &str = "sent";
const DROPPED: &str = "dropped";
const SENDS: &str = "sends";

/// How much of a mailbox a change loads. A send, a lease and an ack only
/// append to the history and prune it (by times and counts): they load
/// the waiting messages, the dropped ids and the send times, and of the
/// history only the items whose ids the change names (a retried receipt
/// or send is known by its id); the history is pruned in SQL
/// ([`prune_history`]) rather than carried through the domain, so a full
/// history (`history_max` each way) costs a send no more rows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Depth {
    Full,
    Partial(Vec<String>),
}

/// Host clock minus database clock (ms), taken once per call: the stored
/// times are the database's (a lease set on one host holds on every
/// other), the domain's and the caller's are the host's, as in the
/// presence tables and the events.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Skew);

impl Clock {
    pub fn of(db: &Db) -> Clock {
        Clock(db.skew())
    }

    fn shift(self, t: Timestamp, to_host: bool) -> Timestamp {
        Timestamp(if to_host { self.0.to_host(t.0) } else { self.0.to_db(t.0) })
    }

    fn message(self, m: &mut Message, to_host: bool) {
        m.ts = self.shift(m.ts, to_host);
        m.leased_until = m.leased_until.map(|t| self.shift(t, to_host));
    }

    fn kept(self, k: &mut Kept, to_host: bool) {
        self.message(&mut k.message, to_host);
        k.delivered_at = self.shift(k.delivered_at, to_host);
        k.acknowledged_at = k.acknowledged_at.map(|t| self.shift(t, to_host));
    }
}

/// A mailbox as loaded, with the `seq` of each item, box by box in order,
/// to write the difference.
#[derive(Debug)]
struct Stored {
    inbox: Inbox,
    seqs: HashMap<&'static str, Vec<i64>>,
    clock: Clock,
}

impl Stored {
    fn empty(clock: Clock) -> Stored {
        Stored { inbox: Inbox::default(), seqs: HashMap::new(), clock }
    }
}

/// One item of a mailbox, as the domain holds it.
#[derive(Debug, PartialEq)]
enum Item<'a> {
    Message(&'a Message),
    Kept(&'a Kept),
    Id(&'a String),
    Time(&'a Timestamp),
}

impl Item<'_> {
    /// A history item's time (delivery of a received message, sending of a
    /// sent one) on the database's clock: the `at` the history is pruned
    /// by; None for the other boxes.
    fn at(&self, b: &str, clock: Clock) -> Option<SystemTime> {
        match (self, b) {
            (Item::Kept(k), RECEIVED) => Some(clock.shift(k.delivered_at, false).time()),
            (Item::Message(m), SENT) => Some(clock.shift(m.ts, false).time()),
            _ => None,
        }
    }

    /// The item as stored: its times on the database's clock.
    fn body(&self, clock: Clock) -> Result<Value, Failure> {
        let value = match self {
            Item::Message(m) => {
                let mut m = (*m).clone();
                clock.message(&mut m, false);
                serde_json::to_value(m)
            }
            Item::Kept(k) => {
                let mut k = (*k).clone();
                clock.kept(&mut k, false);
                serde_json::to_value(k)
            }
            Item::Id(id) => serde_json::to_value(id),
            Item::Time(t) => serde_json::to_value(clock.shift(**t, false)),
        };
        value.map_err(|e| tx::internal(format!("a mailbox item does not serialize: {e}")))
    }
}

const BOXES: [&str; 5] = [WAITING, RECEIVED, SENT, DROPPED, SENDS];

/// The items of one box of `inbox`, in order: (id, item).
fn items<'a>(inbox: &'a Inbox, b: &str, clock: Clock) -> Vec<(String, Item<'a>)> {
    let mut out: Vec<(String, Item<'a>)> = match b {
        WAITING => inbox.messages.iter().map(|m| (m.id.clone(), Item::Message(m))).collect(),
        RECEIVED => inbox.received.iter().map(|k| (k.message.id.clone(), Item::Kept(k))).collect(),
        SENT => inbox.sent.iter().map(|m| (m.id.clone(), Item::Message(m))).collect(),
        DROPPED => inbox.dropped.iter().map(|id| (id.clone(), Item::Id(id))).collect(),
        _ => inbox.sends.iter().map(|t| (rfc3339::format(clock.shift(*t, false).time()), Item::Time(t))).collect(),
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (id, _) in &mut out {
        let n = seen.entry(id.clone()).or_default();
        if *n > 0 {
            id.push_str(&format!("#{n}"));
        }
        *n += 1;
    }
    out
}

/// Whether one box is the same in both.
fn same(a: &Inbox, b: &Inbox, which: &str) -> bool {
    match which {
        WAITING => a.messages == b.messages,
        RECEIVED => a.received == b.received,
        SENT => a.sent == b.sent,
        DROPPED => a.dropped == b.dropped,
        _ => a.sends == b.sends,
    }
}

fn parse<T: serde::de::DeserializeOwned>(who: &str, id: &str, body: Value) -> Result<T, Failure> {
    serde_json::from_value(body)
        .map_err(|e| tx::internal(format!("the item {id} of {who}'s mailbox does not load: {e}; it is kept as it is")))
}

/// The mailboxes of `names` (a name with no rows: empty).
async fn load(
    client: &impl GenericClient,
    names: &[&str],
    depth: Depth,
    clock: Clock,
) -> Result<BTreeMap<String, Stored>, Failure> {
    let (partial, ids) = match &depth {
        Depth::Full => (false, &Vec::new()),
        Depth::Partial(ids) => (true, ids),
    };
    let rows = client
        .query(
            "SELECT personality, seq, box, id, body FROM mail
              WHERE personality = ANY($1) AND (NOT $2 OR box NOT IN ('received', 'sent') OR id = ANY($3))
              ORDER BY seq",
            &[&names, &partial, ids],
        )
        .await?;
    let mut out: BTreeMap<String, Stored> = names.iter().map(|n| ((*n).to_owned(), Stored::empty(clock))).collect();
    for r in rows {
        let (who, seq, b, id): (String, i64, String, String) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let stored = out.entry(who.clone()).or_insert_with(|| Stored::empty(clock));
        let inbox = &mut stored.inbox;
        let b = match (b.as_str(), r.get::<_, Option<Value>>(4)) {
            (WAITING, Some(value)) => {
                let mut m: Message = parse(&who, &id, value)?;
                clock.message(&mut m, true);
                inbox.messages.push(m);
                WAITING
            }
            (RECEIVED, Some(value)) => {
                let mut k: Kept = parse(&who, &id, value)?;
                clock.kept(&mut k, true);
                inbox.received.push(k);
                RECEIVED
            }
            (SENT, Some(value)) => {
                let mut m: Message = parse(&who, &id, value)?;
                clock.message(&mut m, true);
                inbox.sent.push(m);
                SENT
            }
            (DROPPED, Some(value)) => {
                inbox.dropped.push(parse(&who, &id, value)?);
                DROPPED
            }
            (SENDS, Some(value)) => {
                inbox.sends.push(clock.shift(parse(&who, &id, value)?, true));
                SENDS
            }
            (other, _) => return Err(tx::internal(format!("{who}'s mailbox has an item in an unknown box {other:?}"))),
        };
        stored.seqs.entry(b).or_default().push(seq);
    }
    Ok(out)
}

/// Writes what changed between the stored mailbox and `after`: removed
/// items deleted, changed ones updated in place, new ones appended in
/// order. Only new and changed items are serialized.
async fn write(tx: &Tx<'_>, who: &str, before: &Stored, after: &Inbox) -> Result<(), Failure> {
    let mut gone = Vec::new();
    let (mut upd_seq, mut upd_body) = (Vec::new(), Vec::new());
    let (mut new_box, mut new_id, mut new_body, mut new_at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in BOXES.into_iter().filter(|b| !same(&before.inbox, after, b)) {
        let seqs = before.seqs.get(b).map(Vec::as_slice).unwrap_or_default();
        let old_items = items(&before.inbox, b, before.clock);
        if old_items.len() != seqs.len() {
            return Err(tx::internal(format!("{who}'s mailbox lost track of its rows")));
        }
        let mut old: HashMap<String, (i64, Item<'_>)> =
            old_items.into_iter().zip(seqs).map(|((id, item), seq)| (id, (*seq, item))).collect();
        for (id, item) in items(after, b, before.clock) {
            match old.remove(&id) {
                Some((seq, prev)) if prev != item => {
                    upd_seq.push(seq);
                    upd_body.push(item.body(before.clock)?);
                }
                Some(_) => {}
                None => {
                    new_box.push(b);
                    new_id.push(id);
                    new_at.push(item.at(b, before.clock));
                    new_body.push(item.body(before.clock)?);
                }
            }
        }
        gone.extend(old.into_values().map(|(seq, _)| seq));
    }
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
            "INSERT INTO mail (personality, box, id, body, at)
             SELECT $1, u.b, u.i, u.j, u.a
               FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::timestamptz[]) WITH ORDINALITY AS u(b, i, j, a, n)
              ORDER BY u.n",
            &[&who, &new_box, &new_id, &new_body, &new_at],
        )
        .await?;
    }
    Ok(())
}

/// The working copies of locked mailboxes: loaded, changed by the domain,
/// written back.
struct Boxes {
    boxes: BTreeMap<String, (Stored, Inbox)>,
    clock: Clock,
}

impl Boxes {
    async fn load(tx: &Tx<'_>, names: &[&str], depth: Depth, clock: Clock) -> Result<Boxes, Failure> {
        let stored = load(&**tx, names, depth, clock).await?;
        let boxes = stored
            .into_iter()
            .map(|(who, stored)| {
                let working = stored.inbox.clone();
                (who, (stored, working))
            })
            .collect();
        Ok(Boxes { boxes, clock })
    }

    fn get(&mut self, who: &str) -> &mut Inbox {
        let clock = self.clock;
        &mut self.boxes.entry(who.to_owned()).or_insert_with(|| (Stored::empty(clock), Inbox::default())).1
    }

    async fn write(&self, tx: &Tx<'_>) -> Result<(), Failure> {
        for (who, (stored, after)) in &self.boxes {
            if stored.inbox != *after {
                write(tx, who, stored, after).await?;
            }
        }
        Ok(())
    }
}

/// `limits` with the history unbounded: what the domain gets when the
/// history is only partly loaded (see [`Depth::Partial`]) and
/// [`prune_history`] bounds it instead.
fn unbounded_history(limits: &Limits) -> Limits {
    Limits { history_max: usize::MAX, history_age: Duration::MAX, ..*limits }
}

/// The domain's history bounds, in SQL, for the mailboxes of `owners`:
/// received and sent items older than `history_age` (by delivery, by
/// sending) go, then the oldest past `history_max` of each box, as
/// `Inbox::prune` does. Times in the rows are on the database's clock.
async fn prune_history(
    tx: &Tx<'_>,
    owners: &[&str],
    limits: &Limits,
    now: SystemTime,
    clock: Clock,
) -> Result<(), Failure> {
    let now = clock.shift(Timestamp(now), false).time();
    let cutoff = now.checked_sub(limits.history_age).unwrap_or(SystemTime::UNIX_EPOCH);
    let max = i64::try_from(limits.history_max).unwrap_or(i64::MAX);
    // By age first, then by count among what is left: both by index.
    tx.execute(
        "DELETE FROM mail WHERE personality = ANY($1) AND box IN ('received', 'sent') AND at <= $2 AND at < $3",
        &[&owners, &cutoff, &now],
    )
    .await?;
    tx.execute(
        "DELETE FROM mail WHERE seq IN (
           SELECT old.seq FROM unnest($1::text[]) AS o(p)
             CROSS JOIN (VALUES ('received'), ('sent')) AS b(box)
             CROSS JOIN LATERAL (SELECT seq FROM mail WHERE personality = o.p AND box = b.box
                                  ORDER BY seq DESC OFFSET $2) AS old)",
        &[&owners, &max],
    )
    .await?;
    Ok(())
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
async fn send_in(
    tx: Tx<'_>,
    db: &Db,
    clock: Clock,
    message: &Message,
    limits: &Limits,
    now: SystemTime,
) -> Result<Sent, Failure> {
    let to: Vec<&str> = message.to.iter().map(String::as_str).collect();
    let mut owners = to.clone();
    if !message.operator {
        owners.push(&message.from);
    }
    tx::lock_peers(&tx, &owners).await?;
    // The operator needs no link: its messages go to any fleet peer.
    let links =
        if message.operator { Links::default() } else { links::between_locked(&tx, &message.from, &to).await? };
    let check = |fleet: &FleetMap| -> Result<(), Refusal> {
        for t in &to {
            if message.operator {
                peers::check_known(Some(fleet), t, false)?;
            } else {
                peers::check_visible(&links, fleet, &message.from, t)?;
            }
        }
        Ok(())
    };
    // The peers of the message are enough to pass; a refusal is worded
    // against the whole registry (it lists the fleet's peers).
    if check(&registry::in_tx(&tx, &db.host_id, Some(&owners)).await?).is_err() {
        check(&registry::in_tx(&tx, &db.host_id, None).await?)?;
    }
    let mut boxes = Boxes::load(&tx, &owners, Depth::Partial(vec![message.id.clone()]), clock).await?;
    if !message.operator {
        boxes.get(&message.from).check_rate(&message.from, limits, now)?;
    }
    let mut recipients = Vec::new();
    let mut events = Vec::new();
    let domain = unbounded_history(limits);
    for t in &to {
        let (queued, e) = boxes.get(t).queue(t, message.clone(), &domain, now);
        recipients.push(queued);
        events.extend(e);
    }
    if !message.operator {
        boxes.get(&message.from).record_sent(message, &domain, now);
    }
    boxes.write(&tx).await?;
    prune_history(&tx, &owners, limits, now, clock).await?;
    crate::db::pause_point("send").await;
    finish(tx, db, &events, &to).await?;
    Ok(peers::sent(message, recipients))
}

pub async fn send(db: &Db, draft: &Draft, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    let clock = Clock::of(db);
    let message = peers::compose(draft, now)?;
    db.call(db.settings.call_timeout, async |c| -> Result<Sent, Failure> {
        send_in(c.transaction().await?, db, clock, &message, limits, now).await
    })
    .await
}

/// A send to the sender of a message `p.from` received, in its thread.
/// The original is read before the locks: a received message never
/// changes but for its acknowledgement.
pub async fn reply(db: &Db, p: &ReplyParams, limits: &Limits, now: SystemTime) -> Result<Sent, StoreError> {
    peers::check_name(&p.from)?;
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<Sent, Failure> {
        let tx = c.transaction().await?;
        let mailbox =
            load(&*tx, &[&p.from], Depth::Full, clock).await?.remove(&p.from).map(|s| s.inbox).unwrap_or_default();
        let original = &mailbox.received_message(&p.message_id)?.message;
        let message = peers::compose(&Draft::reply(&p.from, original, &p.message, p.ack_required)?, now)?;
        send_in(tx, db, clock, &message, limits, now).await
    })
    .await
}

/// The messages waiting for `p`, read without a lock.
async fn waiting_of(client: &impl GenericClient, p: &str, clock: Clock) -> Result<Inbox, Failure> {
    let rows = client
        .query("SELECT id, body FROM mail WHERE personality = $1 AND box = $2 ORDER BY seq", &[&p, &WAITING])
        .await?;
    let mut inbox = Inbox::default();
    for r in rows {
        let mut m: Message = parse(p, r.get(0), r.get(1))?;
        clock.message(&mut m, true);
        inbox.messages.push(m);
    }
    Ok(inbox)
}

pub async fn inbox(db: &Db, p: &str, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    peers::check_name(p)?;
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        Ok(waiting_of(&**c, p, clock).await?.free(now, false))
    })
    .await
}

pub async fn lease(db: &Db, p: &str, urgent_only: bool, now: SystemTime) -> Result<Vec<Message>, StoreError> {
    peers::check_name(p)?;
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        // Every hook asks, and most find nothing: a look without the lock
        // spares them the row lock's write.
        if waiting_of(&**c, p, clock).await?.free(now, urgent_only).is_empty() {
            return Ok(Vec::new());
        }
        let tx = c.transaction().await?;
        tx::lock_peers(&tx, &[p]).await?;
        let mut boxes = Boxes::load(&tx, &[p], Depth::Partial(Vec::new()), clock).await?;
        let taken = boxes.get(p).lease(now, urgent_only);
        boxes.write(&tx).await?;
        tx.commit().await?;
        Ok(taken)
    })
    .await
}

pub async fn ack(db: &Db, p: &str, ids: &[String], limits: &Limits, now: SystemTime) -> Result<usize, StoreError> {
    peers::check_name(p)?;
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<usize, Failure> {
        let tx = c.transaction().await?;
        tx::lock_peers(&tx, &[p]).await?;
        let mut boxes = Boxes::load(&tx, &[p], Depth::Partial(ids.to_vec()), clock).await?;
        let (n, events) = boxes.get(p).deliver(p, ids, &unbounded_history(limits), now);
        boxes.write(&tx).await?;
        prune_history(&tx, &[p], limits, now, clock).await?;
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
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<Acknowledged, Failure> {
        let tx = c.transaction().await?;
        // Whom a receipt would go to, to lock both mailboxes in order.
        let look = load(&*tx, &[p], Depth::Full, clock).await?.remove(p).map(|s| s.inbox).unwrap_or_default();
        let original = look.acknowledgeable(id)?.message.clone();
        let sender = original.from.as_str();
        let owners: Vec<&str> = if original.operator { vec![p] } else { vec![p, sender] };
        tx::lock_peers(&tx, &owners).await?;
        let mut boxes = Boxes::load(&tx, &owners, Depth::Full, clock).await?;
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
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<_, Failure> {
        // One snapshot for the sender's history and its recipients'.
        let tx = c
            .build_transaction()
            .read_only(true)
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        let sender = load(&*tx, &[p], Depth::Full, clock).await?.remove(p).map(|s| s.inbox).unwrap_or_default();
        let recipients = peers::outbox_recipients(&sender, limit);
        let names: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let mailboxes: BTreeMap<String, Inbox> =
            load(&*tx, &names, Depth::Full, clock).await?.into_iter().map(|(who, s)| (who, s.inbox)).collect();
        tx.commit().await?;
        Ok(peers::outbox(&sender, limit, |to| mailboxes.get(to)))
    })
    .await
}

pub async fn mailbox(db: &Db, p: &str) -> Result<Inbox, StoreError> {
    peers::check_name(p)?;
    let clock = Clock::of(db);
    db.call(db.settings.call_timeout, async |c| -> Result<Inbox, Failure> {
        Ok(load(&**c, &[p], Depth::Full, clock).await?.remove(p).map(|s| s.inbox).unwrap_or_default())
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
pub async fn check_all(client: &impl GenericClient, clock: Clock) -> Result<usize, Failure> {
    let rows = client.query("SELECT DISTINCT personality FROM mail", &[]).await?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(load(client, &names, Depth::Full, clock).await?.len())
}

/// Appends to `to` the items of `from` whose key is not in `known`: how
/// many.
fn append<T: Clone>(to: &mut Vec<T>, from: &[T], key: impl Fn(&T) -> &str, known: &HashSet<String>) -> usize {
    let new: Vec<T> = from.iter().filter(|x| !known.contains(key(x))).cloned().collect();
    let n = new.len();
    to.extend(new);
    n
}

/// Appends the items of `inbox` that `p`'s stored mailbox does not have
/// yet (for `store import`), in order, without pruning: how many messages
/// were waiting among them. Send times are not carried: they only count
/// against the rate of the current minute.
pub async fn import(tx: &Tx<'_>, p: &str, inbox: &Inbox, clock: Clock) -> Result<usize, Failure> {
    let mut boxes = Boxes::load(tx, &[p], Depth::Full, clock).await?;
    let target = boxes.get(p);
    let known = |b: &str| -> HashSet<String> { items(target, b, clock).into_iter().map(|(id, _)| id).collect() };
    let (waiting, received, sent, dropped) = (known(WAITING), known(RECEIVED), known(SENT), known(DROPPED));
    let n = append(&mut target.messages, &inbox.messages, |m| &m.id, &waiting);
    append(&mut target.received, &inbox.received, |k| &k.message.id, &received);
    append(&mut target.sent, &inbox.sent, |m| &m.id, &sent);
    append(&mut target.dropped, &inbox.dropped, |d| d, &dropped);
    boxes.write(tx).await?;
    Ok(n)
}
