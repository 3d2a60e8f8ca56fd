//! A touch (sent, opened, clicked, unsubscribed, converted) is written twice in the
//! transaction that records it: as a `CampaignTouchesRecorded` event on this
//! service's feed (for analytics and attribution), and, for deliveries, opens and
//! clicks, as an interaction queued for customer-profile (the customer's timeline,
//! and segment rules over campaign interactions).

use crm_platform::{
    Result,
    feed::{self, NewEvent},
};
use crm_proto::crm::{customer::v1 as cpb, segmentation::v1 as pb};
use prost::Message;
use sea_orm::ConnectionTrait;

use super::{
    forward,
    store::{self, Key},
};

/// Touches per feed event.
const EVENT_BATCH: usize = 1000;

/// One touch to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    pub key: Key,
    pub kind: pb::TouchKind,
    /// `ContactChannel` of the campaign.
    pub channel: i32,
    pub at_us: i64,
    pub control: bool,
    pub order: String,
    pub revenue_micros: i64,
    pub currency: String,
}

impl Touch {
    pub fn new(key: Key, kind: pb::TouchKind, channel: i32, at_us: i64) -> Self {
        Self {
            key,
            kind,
            channel,
            at_us,
            control: false,
            order: String::new(),
            revenue_micros: 0,
            currency: String::new(),
        }
    }
}

fn to_proto(t: &Touch) -> pb::CampaignTouch {
    pb::CampaignTouch {
        campaign: format!("campaigns/{}", t.key.campaign_id),
        run: t.key.run,
        customer: format!("customers/{}", t.key.person_id),
        kind: t.kind as i32,
        channel: t.channel,
        occur_time: Some(feed::from_micros(t.at_us)),
        control: t.control,
        order: t.order.clone(),
        revenue_micros: t.revenue_micros,
        currency: t.currency.clone(),
    }
}

/// The interaction a touch is in customer-profile, if it is one.
fn interaction(t: &Touch, source: &str) -> Option<cpb::InteractionInput> {
    let kind = match t.kind {
        pb::TouchKind::Sent => cpb::InteractionKind::CampaignDelivered,
        pb::TouchKind::Opened => cpb::InteractionKind::CampaignOpened,
        pb::TouchKind::Clicked => cpb::InteractionKind::CampaignClicked,
        _ => return None,
    };
    let channel = super::Channel::from_proto(t.channel)?.interaction_channel();
    Some(cpb::InteractionInput {
        customer: Some(cpb::CustomerReference {
            reference: Some(cpb::customer_reference::Reference::Customer(format!(
                "customers/{}",
                t.key.person_id
            ))),
        }),
        interaction: Some(cpb::Interaction {
            kind: kind as i32,
            channel: channel as i32,
            occur_time: Some(feed::from_micros(t.at_us)),
            properties: [("run".to_owned(), t.key.run.to_string())].into(),
            campaign: format!("campaigns/{}", t.key.campaign_id),
            source: source.to_owned(),
            // One per delivery and kind: a repeat is acknowledged, not stored twice.
            external_id: format!(
                "{}:{}:{}:{}",
                t.key.campaign_id,
                t.key.run,
                t.key.person_id,
                t.kind.as_str_name()
            ),
            ..Default::default()
        }),
    })
}

/// Records `touches` in the caller's transaction (call `Feed::committed` after).
pub async fn record<C: ConnectionTrait>(conn: &C, touches: &[Touch], source: &str, now_us: i64) -> Result<()> {
    if touches.is_empty() {
        return Ok(());
    }
    // One event per campaign (its subject) and at most EVENT_BATCH touches.
    let mut by_campaign: std::collections::BTreeMap<&str, Vec<&Touch>> = std::collections::BTreeMap::new();
    for t in touches {
        by_campaign.entry(&t.key.campaign_id).or_default().push(t);
    }
    let events = by_campaign
        .into_iter()
        .flat_map(|(campaign, touches)| {
            touches
                .chunks(EVENT_BATCH)
                .map(|chunk| NewEvent {
                    event_type: "crm.segmentation.v1.CampaignTouchesRecorded",
                    subject: format!("campaigns/{campaign}"),
                    actor: crate::SERVICE.to_owned(),
                    data: pb::CampaignTouchesRecorded {
                        touches: chunk.iter().map(|t| to_proto(t)).collect(),
                    }
                    .encode_to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    feed::append_many(conn, events).await?;
    let payloads: Vec<Vec<u8>> = touches
        .iter()
        .filter_map(|t| interaction(t, source))
        .map(|i| i.encode_to_vec())
        .collect();
    store::push_forwards(conn, forward::INTERACTION, &payloads, now_us).await
}
