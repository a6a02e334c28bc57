//! One gateway's MQTT session: a rumqttc client whose last will is the gateway's retained
//! OFFLINE, and a task polling its event loop.

use super::{Inbox, MqttConfig};
use crate::eui::Eui64;
use crate::mqtt::{Publish, Qos};
use crate::Session;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use std::time::Duration;
use tokio::task::JoinHandle;

pub(super) struct SessionHandle {
    gateway: Eui64,
    client: AsyncClient,
    task: JoinHandle<()>,
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Requests queued for the event loop while the broker is away; publishes beyond it are
/// dropped (and logged) rather than stalling every gateway's UDP traffic.
const QUEUE: usize = 512;

impl SessionHandle {
    pub(super) fn start(session: Session, mqtt: &MqttConfig, inbox: Inbox) -> Self {
        let gateway = session.gateway;
        let mut options = MqttOptions::new(
            format!("{}-{gateway}", mqtt.client_id_prefix),
            &mqtt.host,
            mqtt.port,
        );
        options
            .set_keep_alive(mqtt.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024, 256 * 1024)
            .set_last_will(LastWill::new(
                session.will.topic.clone(),
                session.will.payload.clone(),
                qos(session.will.qos),
                session.will.retain,
            ));
        if let Some(user) = &mqtt.username {
            options.set_credentials(user, mqtt.password.clone().unwrap_or_default());
        }
        let (client, eventloop) = AsyncClient::new(options, QUEUE);
        // Queued before anything else, so ONLINE is the session's first publish.
        subscribe_and_announce(&client, &session);
        let task = tokio::spawn(poll(
            session,
            eventloop,
            client.clone(),
            inbox,
            mqtt.reconnect_delay,
        ));
        Self {
            gateway,
            client,
            task,
        }
    }

    pub(super) fn publish(&self, message: &Publish) {
        let r = self.client.try_publish(
            &message.topic,
            qos(message.qos),
            message.retain,
            message.payload.clone(),
        );
        if let Err(e) = r {
            tracing::warn!(gateway = %self.gateway, topic = message.topic, error = %e, "MQTT publish dropped");
        }
    }

    /// Publishes `offline`, disconnects, and returns the task, which ends once the
    /// DISCONNECT is out or after `grace`.
    pub(super) fn close(self, offline: &Publish, grace: Duration) -> JoinHandle<()> {
        self.publish(offline);
        if let Err(e) = self.client.try_disconnect() {
            tracing::warn!(gateway = %self.gateway, error = %e, "MQTT disconnect not queued");
        }
        let abort = self.task.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            // Dropping the connection uncleanly makes the broker publish the will: the
            // same OFFLINE.
            abort.abort();
        });
        self.task
    }
}

fn subscribe_and_announce(client: &AsyncClient, session: &Session) {
    let sub = client.try_subscribe(&session.commands, qos(session.qos));
    let online = &session.online;
    let publ = client.try_publish(
        &online.topic,
        qos(online.qos),
        online.retain,
        online.payload.clone(),
    );
    if let Err(e) = sub.and(publ) {
        tracing::warn!(gateway = %session.gateway, error = %e, "MQTT subscribe/ONLINE not queued");
    }
}

async fn poll(
    session: Session,
    mut eventloop: EventLoop,
    client: AsyncClient,
    inbox: Inbox,
    reconnect_delay: Duration,
) {
    let gateway = session.gateway;
    let mut connections = 0u64;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connections += 1;
                tracing::debug!(%gateway, connections, "MQTT session connected");
                // A clean session forgets subscriptions, and the will may have fired while
                // the connection was down: say both again.
                if connections > 1 {
                    subscribe_and_announce(&client, &session);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if inbox.send((p.topic, p.payload.to_vec())).await.is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::debug!(%gateway, "MQTT session closed");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%gateway, error = %e, "MQTT session lost; reconnecting");
                tokio::time::sleep(reconnect_delay).await;
            }
        }
    }
}
