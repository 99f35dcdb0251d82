//! Conformance checks every engine must pass, written once against the domain traits.

#![allow(dead_code)]

use coditect_proto::TenantId;
use coditect_store::{StoreError, Tenant, TenantStore};

pub async fn tenants_round_trip(store: &dyn TenantStore) {
    let acme = Tenant::new(format!("acme-{}", TenantId::new()));
    store.create_tenant(&acme).await.expect("create");
    let got = store
        .get_tenant(acme.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got, acme, "a tenant reads back exactly as written");
    assert_eq!(store.get_tenant(TenantId::new()).await.expect("get"), None);

    let same_name = Tenant {
        id: TenantId::new(),
        ..acme.clone()
    };
    assert!(matches!(
        store.create_tenant(&same_name).await,
        Err(StoreError::Conflict(_))
    ));
    let same_id = Tenant {
        name: format!("other-{}", TenantId::new()),
        ..acme.clone()
    };
    assert!(matches!(
        store.create_tenant(&same_id).await,
        Err(StoreError::Conflict(_))
    ));
}

pub async fn tenants_paginate_in_id_order(store: &dyn TenantStore) {
    let mut created = Vec::new();
    for i in 0..7 {
        let t = Tenant::new(format!("page-{i}-{}", TenantId::new()));
        store.create_tenant(&t).await.expect("create");
        created.push(t);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_tenants(after, 3).await.expect("list");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page);
    }
    let ids: Vec<_> = seen.iter().map(|t| t.id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "pages come in id order");
    for t in &created {
        assert!(seen.contains(t), "every tenant is listed once");
    }
    assert_eq!(ids.len(), {
        let mut d = ids.clone();
        d.dedup();
        d.len()
    });
}
