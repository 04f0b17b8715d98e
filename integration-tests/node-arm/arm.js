// Microsoft's @azure/arm-relay against the emulator's ARM endpoint (ARM.md §7.3): create a
// namespace, a hybrid connection and a rule, list keys, delete, and see the 404 after.
// Env: ARM_ENDPOINT, ARM_SUBSCRIPTION, ARM_TOKEN; NODE_EXTRA_CA_CERTS trusts the emulator's CA.
// Prints one line per step; exits 1 at the first failure.
"use strict";
const assert = require("node:assert/strict");
const { RelayAPI } = require("@azure/arm-relay");

const base = process.env.ARM_ENDPOINT.replace(/\/$/, "");
const sub = process.env.ARM_SUBSCRIPTION;
const credential = {
  async getToken() {
    return { token: process.env.ARM_TOKEN, expiresOnTimestamp: Date.now() + 3600e3 };
  },
};
const client = new RelayAPI(credential, sub, { endpoint: base });
const rg = "js-rg";
const name = "js-relay-ns";
const step = (text) => console.log(`ok: ${text}`);

(async () => {
  const ns = await client.namespaces.beginCreateOrUpdateAndWait(rg, name, {
    location: "westus",
    sku: { name: "Standard", tier: "Standard" },
  });
  assert.equal(ns.name, name);
  assert.equal(ns.provisioningState, "Succeeded");
  assert.match(ns.serviceBusEndpoint, new RegExp(`^https://${name}\\.localhost:`));
  step("namespace created");
  const hc = await client.hybridConnections.createOrUpdate(rg, name, "hc1", {
    requiresClientAuthorization: true,
    userMetadata: '[{"key":"endpoint","value":"sqlhost:1433"}]',
  });
  assert.equal(hc.userMetadata, '[{"key":"endpoint","value":"sqlhost:1433"}]');
  assert.equal(hc.listenerCount, 0);
  const rule = await client.hybridConnections.createOrUpdateAuthorizationRule(rg, name, "hc1", "defaultListener", {
    rights: ["Listen"],
  });
  assert.deepEqual(rule.rights, ["Listen"]);
  step("hybrid connection and rule created");
  const keys = await client.hybridConnections.listKeys(rg, name, "hc1", "defaultListener");
  assert.match(keys.primaryConnectionString, /;EntityPath=hc1$/);
  assert.equal(keys.primaryKey.length, 44);
  const root = await client.namespaces.listKeys(rg, name, "RootManageSharedAccessKey");
  assert.equal(root.keyName, "RootManageSharedAccessKey");
  const renewed = await client.hybridConnections.regenerateKeys(rg, name, "hc1", "defaultListener", {
    keyType: "SecondaryKey",
  });
  assert.notEqual(renewed.secondaryKey, keys.secondaryKey);
  step("keys listed and regenerated");
  const listed = [];
  for await (const n of client.namespaces.listByResourceGroup(rg)) listed.push(n.name);
  assert.deepEqual(listed, [name]);
  await client.hybridConnections.delete(rg, name, "hc1");
  await client.namespaces.beginDeleteAndWait(rg, name);
  await assert.rejects(client.namespaces.get(rg, name), (e) => e.statusCode === 404 && e.code === "ResourceNotFound");
  step("deleted; a missing namespace is a RestError 404");
  console.log("all steps passed");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
