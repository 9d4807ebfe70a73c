-- Argo CD health check for the prfaas.io kinds (ServingPlan, PrefillCluster, DecodeCluster,
-- InterDCLink). Argo CD does not infer health for custom resources, so each kind's status
-- summarises its children: observedGeneration, and the conditions Ready / Degraded / Stalled
-- (ServingPlan), Reachable (clusters) or Ready (links).
local hs = {}
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: waiting for children in every cluster to be removed"
  return hs
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the prfaas operator"
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local conds = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conds[c.type] = c
  end
end
local function msg(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason or ""
end
local terminal = { PlanInfeasible = true, InvalidSpec = true, NoBandwidth = true }
if conds.Stalled ~= nil and conds.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(conds.Stalled)
  return hs
end
if conds.Degraded ~= nil and conds.Degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = msg(conds.Degraded)
  return hs
end
if conds.Reachable ~= nil then
  if conds.Reachable.status == "True" then
    hs.status = "Healthy"
  elseif conds.Reachable.status == "False" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = msg(conds.Reachable)
  return hs
end
if conds.Ready ~= nil then
  if conds.Ready.status == "True" then
    hs.status = "Healthy"
  elseif conds.Ready.status == "False" and terminal[conds.Ready.reason] then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = msg(conds.Ready)
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for conditions"
return hs
