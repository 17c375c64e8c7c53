//! Which EC2 instance and availability zone this node is, from the instance metadata service
//! (IMDSv2, through aws-config's client: session token, `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//! and `AWS_EC2_METADATA_DISABLED` as every AWS SDK understands them). Asked once, in the
//! background; off EC2 it fails within a second and segments simply carry no `aws.ec2`.

use std::time::Duration;

use aws_config::{imds, provider_config::ProviderConfig};

use super::SharedMeta;
use crate::trace::span::Ec2Resource;

pub async fn query() -> Result<Ec2Resource, String> {
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err("AWS_EC2_METADATA_DISABLED=true".to_owned());
    }
    let http = crate::aws::https_client();
    let client = imds::Client::builder()
        .configure(&ProviderConfig::default().with_http_client(http))
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .max_attempts(1)
        .build();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(path)
                .await
                .map(|v| v.as_ref().trim().to_owned())
                .map_err(|e| format!("{path}: {e}"))
        }
    };
    Ok(Ec2Resource {
        instance_id: get("/latest/meta-data/instance-id").await?,
        availability_zone: get("/latest/meta-data/placement/availability-zone").await?,
    })
}

/// Fills `shared.ec2` when the metadata service answers; says once what happened.
pub fn spawn(shared: SharedMeta) {
    tokio::spawn(async move {
        match query().await {
            Ok(meta) => {
                tracing::info!(
                    instance_id = %meta.instance_id,
                    availability_zone = %meta.availability_zone,
                    "EC2 instance metadata found"
                );
                *shared.ec2.write().unwrap_or_else(|e| e.into_inner()) = Some(meta);
            }
            Err(e) => tracing::info!("not on EC2 (no aws.ec2 in segments): {e}"),
        }
    });
}
