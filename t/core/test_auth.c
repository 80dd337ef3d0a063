/*
 * The authorisation rules (src/core/mx_auth.c), walked rule by rule: one
 * table row per case, each naming the rule it exercises and, for every
 * room version it runs in, the rule that must decide.
 *
 * JSON is written with single quotes to stay readable; they become double
 * quotes before parsing.  What every PDU needs and no rule looks at
 * (hashes, signatures, depth, origin_server_ts, prev_events) is filled
 * in, and so are:
 *
 *   room_id       "!r:a.org", or in v12 the ID the state's create event
 *                 gives (a v12 create event gets none)
 *   auth_events   every state event of the row (but the v12 create)
 *   "#N"          in auth_events and prev_events: state event N's ID
 *   "@pk" "@pk2"  the test identity server's public keys (standard
 *   "@pk_url"     base64; the first also url-safe)
 *   "signatures": "@sign" / "@sign2"
 *                 in an object: signed by identity server key 1 / 2;
 *                 "@sign_other": by key 1, filed as "curve25519:0"
 *
 * Row names number the rules as v10 and v11 do; the expectation gives
 * the number each version uses ("10,11=4.3.2 12=5.3.2").
 *
 * Every row runs against the state as the event's auth events; the
 * message must start with "rule <the expected rule>:", allowed or not.
 */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx_core.h"
#include "mx_event.h"
#include "mx_auth.h"
#include "tap.h"


#define T_MAX_STATE   8
#define T_IS_SERVER   "id.example"

#define T_ALLOW       1
#define T_REFUSE      0


typedef struct {
    const char     *expect;     /* "10,11=4.3.2 12=5.3.2" */
    int             allowed;
    const char     *name;
    const char     *event;
    const char     *state[T_MAX_STATE];
} t_row_t;


typedef struct {
    mx_signing_key_t    key1;
    mx_signing_key_t    key2;
    char                pk1[44];
    char                pk2[44];
    char                pk1_url[44];
} t_keys_t;


/* users: alice created the room, admin 100, bob 50, carol 0 */

#define ALICE   "@alice:a.org"
#define ADMIN   "@admin:a.org"
#define BOB     "@bob:a.org"
#define CAROL   "@carol:a.org"
#define DAVE    "@dave:c.org"
#define EVE     "@eve:a.org"
#define FRANK   "@frank:a.org"
#define ZED     "@zed:b.org"


/* state */

#define CREATE_C(content)                                                    \
    "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"           \
    "'content':" content "}"

#define CREATE          CREATE_C("{'creator':'" ALICE "'}")
#define CREATE_NOFED    CREATE_C("{'creator':'" ALICE "','m.federate':false}")
#define CREATE_FED      CREATE_C("{'creator':'" ALICE "','m.federate':true}")
#define CREATE_BOBC     CREATE_C("{'creator':'" BOB "'}")
#define CREATE_AC       CREATE_C("{'creator':'" ALICE "',"                   \
                                 "'additional_creators':['" BOB "']}")

#define PL_C(content)                                                        \
    "{'type':'m.room.power_levels','state_key':'','sender':'" ADMIN "',"     \
    "'content':{" content "}}"

#define PL_USERS        "'users':{'" ADMIN "':100,'" BOB "':50}"
#define PL_REST         "'users_default':0,'events_default':0,"              \
                        "'state_default':50,'ban':50,'kick':50,'redact':50," \
                        "'invite':0,'events':{'m.room.name':50}"
#define PL              PL_C(PL_USERS "," PL_REST)

#define M(user, membership)                                                  \
    "{'type':'m.room.member','state_key':'" user "','sender':'" user "',"    \
    "'content':{'membership':'" membership "'}}"

#define JR(rule)                                                             \
    "{'type':'m.room.join_rules','state_key':'','sender':'" ADMIN "',"       \
    "'content':{'join_rule':'" rule "'}}"

#define TPI_C(sender, token, content)                                        \
    "{'type':'m.room.third_party_invite','state_key':'" token "',"           \
    "'sender':'" sender "','content':{'display_name':'d',"                   \
    "'key_validity_url':'https://id.example/v'," content "}}"

#define TPI             TPI_C(BOB, "tok", "'public_key':'@pk'")


/* events */

#define MSG(sender)                                                          \
    "{'type':'m.room.message','sender':'" sender "',"                        \
    "'content':{'body':'hi'}}"

#define STATE_EV(sender, type, state_key)                                    \
    "{'type':'" type "','state_key':'" state_key "','sender':'" sender "',"  \
    "'content':{}}"

#define MEM(sender, target, membership)                                      \
    "{'type':'m.room.member','sender':'" sender "','state_key':'" target "',"\
    "'content':{'membership':'" membership "'}}"

#define MEM_X(sender, target, extra, content)                                \
    "{'type':'m.room.member','sender':'" sender "','state_key':'" target "',"\
    extra "'content':" content "}"

#define PL_EV(sender, content)                                               \
    "{'type':'m.room.power_levels','state_key':'','sender':'" sender "',"    \
    "'content':{" content "}}"

/* a restricted join by dave, authorised by bob, signed by both servers */
#define SIGNED_BOTH     "'signatures':{'c.org':{'ed25519:1':'s'},"           \
                        "'a.org':{'ed25519:1':'s'}},"
#define SIGNED_DAVE     "'signatures':{'c.org':{'ed25519:1':'s'}},"
#define VIA(user)       "{'membership':'join',"                              \
                        "'join_authorised_via_users_server':'" user "'}"

/* bob's invite of dave that redeems the third-party invite "tok" */
#define TPI_INVITE(signed)                                                   \
    MEM_X(BOB, DAVE, "", "{'membership':'invite','third_party_invite':"      \
          "{'display_name':'d','signed':" signed "}}")
#define SIGNED_OK       "{'mxid':'" DAVE "','token':'tok','signatures':'@sign'}"


static const t_row_t  t_rows[] = {

    /* ---- rule 1: m.room.create ---- */

    { "10=1.5 11=1.4 12=1.5", T_ALLOW,
      "1 create: a first event with no prev_events is allowed",
      CREATE, { NULL } },

    { "10,11,12=1.1", T_REFUSE,
      "1.1 create: prev_events must be empty",
      "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"
      "'prev_events':['$abc'],'content':{'creator':'" ALICE "'}}",
      { NULL } },

    { "10=1.5 11=1.4", T_ALLOW,
      "1.2 create: room_id domain is the sender's",
      "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"
      "'room_id':'!r:a.org','content':{'creator':'" ALICE "'}}",
      { NULL } },

    { "10,11=1.2", T_REFUSE,
      "1.2 create: room_id domain must be the sender's",
      "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"
      "'room_id':'!r:b.org','content':{'creator':'" ALICE "'}}",
      { NULL } },

    { "12=1.2", T_REFUSE,
      "1.2 create (v12): a room_id is refused",
      "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"
      "'room_id':'!r:a.org','content':{}}",
      { NULL } },

    { "10=1.5", T_ALLOW,
      "1.3 create: content.room_version 10 is known",
      CREATE_C("{'creator':'" ALICE "','room_version':'10'}"), { NULL } },

    { "11=1.4", T_ALLOW,
      "1.3 create: content.room_version 11 is known",
      CREATE_C("{'room_version':'11'}"), { NULL } },

    { "12=1.5", T_ALLOW,
      "1.3 create: content.room_version 12 is known",
      CREATE_C("{'room_version':'12'}"), { NULL } },

    { "10,11,12=1.3", T_REFUSE,
      "1.3 create: an unknown content.room_version is refused",
      CREATE_C("{'creator':'" ALICE "','room_version':'99'}"), { NULL } },

    { "10,11,12=1.3", T_REFUSE,
      "1.3 create: a room_version that is not a string is not one",
      CREATE_C("{'creator':'" ALICE "','room_version':10}"), { NULL } },

    { "10=1.5 11=1.4 12=1.5", T_ALLOW,
      "1.3 create: room version 1 is known, if only for old rooms",
      CREATE_C("{'creator':'" ALICE "','room_version':'1'}"), { NULL } },

    { "10=1.4", T_REFUSE,
      "1.4 create (v10): content.creator is required",
      CREATE_C("{}"), { NULL } },

    { "11=1.4 12=1.5", T_ALLOW,
      "1.4 create (v11+): no creator needed, the sender is the creator",
      CREATE_C("{}"), { NULL } },

    { "10=1.5 11=1.4", T_ALLOW,
      "1.4 create (v12): additional_creators is not checked before v12",
      CREATE_C("{'creator':'" ALICE "','additional_creators':'x'}"),
      { NULL } },

    { "12=1.5", T_ALLOW,
      "1.4 create (v12): additional_creators of valid user IDs",
      CREATE_C("{'additional_creators':['" BOB "','" DAVE "']}"), { NULL } },

    { "12=1.5", T_ALLOW,
      "1.4 create (v12): an empty additional_creators",
      CREATE_C("{'additional_creators':[]}"), { NULL } },

    { "12=1.4", T_REFUSE,
      "1.4 create (v12): additional_creators must be an array",
      CREATE_C("{'additional_creators':'" BOB "'}"), { NULL } },

    { "12=1.4", T_REFUSE,
      "1.4 create (v12): additional_creators holds strings",
      CREATE_C("{'additional_creators':['" BOB "',5]}"), { NULL } },

    { "12=1.4", T_REFUSE,
      "1.4 create (v12): additional_creators holds user IDs",
      CREATE_C("{'additional_creators':['bob']}"), { NULL } },

    { "12=1.4", T_REFUSE,
      "1.4 create (v12): a user ID needs a localpart",
      CREATE_C("{'additional_creators':['@:a.org']}"), { NULL } },

    { "12=1.4", T_REFUSE,
      "1.4 create (v12): a user ID needs a valid server name",
      CREATE_C("{'additional_creators':['@bob:a.org:']}"), { NULL } },

    /* ---- v12 rule 2: the room ID is the create event's ---- */

    { "12=11", T_ALLOW,
      "2 (v12): room_id is the create event ID with '!'",
      MSG(BOB), { CREATE, PL, M(BOB, "join") } },

    { "12=2", T_REFUSE,
      "2 (v12): room_id must be the create event ID",
      "{'type':'m.room.message','sender':'" BOB "','room_id':'!wrong',"
      "'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "12=2", T_REFUSE,
      "2 (v12): no create event, no room",
      MSG(BOB), { PL, M(BOB, "join") } },

    /* ---- rule 2 (v12: 3): the auth events ---- */

    { "10,11=10 12=11", T_ALLOW,
      "2 auth events: one per type and state_key, all selected",
      MSG(BOB), { CREATE, PL, M(BOB, "join") } },

    { "10,11=2.1 12=3.1", T_REFUSE,
      "2.1 auth events: duplicate (type, state_key)",
      MSG(BOB),
      { CREATE, PL, M(BOB, "join"),
        "{'type':'m.room.member','state_key':'" BOB "','sender':'" BOB "',"
        "'content':{'membership':'join','displayname':'b'}}" } },

    { "10,11=2.2 12=3.2", T_REFUSE,
      "2.2 auth events: a message may not cite the join rules",
      MSG(BOB), { CREATE, PL, M(BOB, "join"), JR("public") } },

    { "10,11=2.2 12=3.2", T_REFUSE,
      "2.2 auth events: a message may not cite another user's membership",
      MSG(BOB), { CREATE, PL, M(BOB, "join"), M(CAROL, "join") } },

    { "10,11=2.2 12=3.2", T_REFUSE,
      "2.2 auth events: a non-state event is never selected",
      MSG(BOB), { CREATE, PL, M(BOB, "join"), MSG(CAROL) } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "2.2 auth events: a join may cite the join rules",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("public") } },

    { "10,11=10", T_ALLOW,
      "2.2 auth events: state passed but not cited is not checked",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#0','#1','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join"), JR("public"), M(CAROL, "join") } },

    { "12=11", T_ALLOW,
      "3.2 auth events (v12): state passed but not cited is not checked",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#1','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join"), JR("public"), M(CAROL, "join") } },

    { "10,11=2.1", T_REFUSE,
      "2.1 auth events: one event cited twice is two for one key",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#0','#1','#2','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "12=3.1", T_REFUSE,
      "3.1 auth events (v12): one event cited twice is two for one key",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#1','#2','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "12=3.2", T_REFUSE,
      "3.2 auth events (v12): the create event must not be cited",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#0','#1','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=2.4", T_REFUSE,
      "2.4 auth events: the create event must be cited",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#1','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=2.5 12=3.4", T_REFUSE,
      "2.5 (v12: 3.4) auth events: all in the event's room",
      MSG(BOB),
      { CREATE, PL,
        "{'type':'m.room.member','state_key':'" BOB "','sender':'" BOB "',"
        "'room_id':'!other:a.org','content':{'membership':'join'}}" } },

    /* ---- rule 3 (v12: 4): m.federate ---- */

    { "10,11=3 12=4", T_REFUSE,
      "3 federate: another server's user in an unfederated room",
      MSG(ZED), { CREATE_NOFED, PL, M(ZED, "join") } },

    { "10,11=3 12=4", T_REFUSE,
      "3 federate: applies to membership events too",
      MEM(ZED, ZED, "join"), { CREATE_NOFED, PL, JR("public") } },

    { "10,11=10 12=11", T_ALLOW,
      "3 federate: the creator's server in an unfederated room",
      MSG(BOB), { CREATE_NOFED, PL, M(BOB, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "3 federate: m.federate true lets other servers in",
      MSG(ZED), { CREATE_FED, PL, M(ZED, "join") } },

    /* ---- rule 4 (v12: 5): m.room.member ---- */

    { "10,11=4.1 12=5.1", T_REFUSE,
      "4.1 member: a state_key is required",
      "{'type':'m.room.member','sender':'" BOB "',"
      "'content':{'membership':'join'}}",
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=4.1 12=5.1", T_REFUSE,
      "4.1 member: content.membership is required",
      MEM_X(BOB, BOB, "", "{'displayname':'b'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=4.1 12=5.1", T_REFUSE,
      "4.1 member: a membership that is not a string is none",
      MEM_X(BOB, BOB, "", "{'membership':5}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=4.3.5.3 12=5.3.5.3", T_ALLOW,
      "4.2.1 member: signed by the authorising user's server",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("restricted"), M(BOB, "join") } },

    { "10,11=4.2.1 12=5.2.1", T_REFUSE,
      "4.2.1 member: join_authorised_via_users_server needs its signature",
      MEM_X(DAVE, DAVE, SIGNED_DAVE, VIA(BOB)),
      { CREATE, PL, JR("restricted"), M(BOB, "join") } },

    { "10,11=4.2.1 12=5.2.1", T_REFUSE,
      "4.2.1 member: an empty signatures entry is no signature",
      MEM_X(DAVE, DAVE, "'signatures':{'c.org':{'ed25519:1':'s'},'a.org':{}},",
            VIA(BOB)),
      { CREATE, PL, JR("restricted"), M(BOB, "join") } },

    { "10,11=4.2.1 12=5.2.1", T_REFUSE,
      "4.2.1 member: the key is checked whatever the membership",
      MEM_X(DAVE, DAVE, SIGNED_DAVE,
            "{'membership':'leave','join_authorised_via_users_server':'"
            BOB "'}"),
      { CREATE, PL, M(DAVE, "invite") } },

    { "10,11=4.2.1 12=5.2.1", T_REFUSE,
      "4.2.1 member: a key that is no user ID has no server to sign",
      MEM_X(DAVE, DAVE, SIGNED_BOTH,
            "{'membership':'join','join_authorised_via_users_server':'bob'}"),
      { CREATE, PL, JR("public") } },

    /* join */

    { "10,11=4.3.1 12=5.3.1", T_ALLOW,
      "4.3.1 join: the creator's join right after the create event",
      MEM_X(ALICE, ALICE, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE } },

    { "10=4.3.1", T_ALLOW,
      "4.3.1 join (v10): the creator is content.creator",
      MEM_X(BOB, BOB, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE_BOBC } },

    { "11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.1 join (v11+): the creator is the create event's sender",
      MEM_X(BOB, BOB, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE_BOBC } },

    { "10=4.3.7", T_REFUSE,
      "4.3.1 join (v10): the create's sender is not the creator",
      MEM_X(ALICE, ALICE, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE_BOBC } },

    { "11=4.3.1 12=5.3.1", T_ALLOW,
      "4.3.1 join (v11+): the create's sender is the creator",
      MEM_X(ALICE, ALICE, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE_BOBC } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.1 join: not when the create event is not the only prev_event",
      MEM_X(ALICE, ALICE, "'prev_events':['#0','$x'],",
            "{'membership':'join'}"),
      { CREATE } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.1 join: not for anyone but the creator",
      MEM_X(CAROL, CAROL, "'prev_events':['#0'],", "{'membership':'join'}"),
      { CREATE } },

    { "10,11=4.3.2 12=5.3.2", T_REFUSE,
      "4.3.2 join: the sender must be the state_key",
      MEM(BOB, CAROL, "join"), { CREATE, PL, M(BOB, "join"), JR("public") } },

    { "10,11=4.3.3 12=5.3.3", T_REFUSE,
      "4.3.3 join: a banned sender cannot join",
      MEM(EVE, EVE, "join"), { CREATE, PL, M(EVE, "ban"), JR("public") } },

    { "10,11=4.3.4 12=5.3.4", T_ALLOW,
      "4.3.4 join: invite rule, invited",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite"), JR("invite") } },

    { "10,11=4.3.4 12=5.3.4", T_ALLOW,
      "4.3.4 join: invite rule, already joined",
      MEM(CAROL, CAROL, "join"), { CREATE, PL, M(CAROL, "join"), JR("invite") } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.4 join: invite rule, not invited",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("invite") } },

    { "10,11=4.3.4 12=5.3.4", T_ALLOW,
      "4.3.4 join: knock rule, invited",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite"), JR("knock") } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.4 join: knock rule, only knocked",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "knock"), JR("knock") } },

    { "10,11=4.3.4 12=5.3.4", T_ALLOW,
      "4.3.4 join: no join rules event counts as invite",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite") } },

    { "10,11=4.3.4 12=5.3.4", T_ALLOW,
      "4.3.4 join: a join rules event without join_rule counts as invite",
      MEM(DAVE, DAVE, "join"),
      { CREATE, PL, M(DAVE, "invite"),
        "{'type':'m.room.join_rules','state_key':'','sender':'" ADMIN "',"
        "'content':{}}" } },

    { "10,11=4.3.5.1 12=5.3.5.1", T_ALLOW,
      "4.3.5.1 join: restricted rule, invited",
      MEM(DAVE, DAVE, "join"),
      { CREATE, PL, M(DAVE, "invite"), JR("restricted") } },

    { "10,11=4.3.5.1 12=5.3.5.1", T_ALLOW,
      "4.3.5.1 join: restricted rule, already joined",
      MEM(CAROL, CAROL, "join"),
      { CREATE, PL, M(CAROL, "join"), JR("restricted") } },

    { "10,11=4.3.5.1 12=5.3.5.1", T_ALLOW,
      "4.3.5.1 join: knock_restricted rule, invited",
      MEM(DAVE, DAVE, "join"),
      { CREATE, PL, M(DAVE, "invite"), JR("knock_restricted") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.2 join: restricted rule needs join_authorised_via_users_server",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("restricted") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.2 join: knock_restricted rule needs an authorising user",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("knock_restricted") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.2 join: the authorising user must be joined",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(CAROL)),
      { CREATE, PL, JR("restricted"), M(CAROL, "leave") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.2 join: the authorising user must have a member event",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(FRANK)),
      { CREATE, PL, JR("restricted") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.2 join: the authorising user must reach the invite level",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL_C(PL_USERS ",'invite':60"), JR("restricted"),
        M(BOB, "join") } },

    { "10,11=4.3.5.3 12=5.3.5.3", T_ALLOW,
      "4.3.5.3 join: knock_restricted rule, authorised by bob",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("knock_restricted"), M(BOB, "join") } },

    { "10,11=4.3.5.3 12=5.3.5.3", T_ALLOW,
      "4.3.5.3 join: authorised by a user exactly at the invite level",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL_C(PL_USERS ",'invite':50"), JR("restricted"),
        M(BOB, "join") } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "4.3.6 join: public rule",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("public") } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "4.3.6 join: public rule, after leaving",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "leave"), JR("public") } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.7 join: private rule",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite"), JR("private") } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.7 join: a join_rule that is not a string",
      MEM(DAVE, DAVE, "join"),
      { CREATE, PL, M(DAVE, "invite"),
        "{'type':'m.room.join_rules','state_key':'','sender':'" ADMIN "',"
        "'content':{'join_rule':5}}" } },

    /* invite: third-party */

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.7 invite: signed with public_key of the third-party invite",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.7 invite: signed with a key of public_keys",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"),
        TPI_C(BOB, "tok", "'public_key':'@pk2','public_keys':"
              "[{'public_key':'@pk2'},{'public_key':'@pk'}]") } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.7 invite: a public key in url-safe base64",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"),
        TPI_C(BOB, "tok", "'public_key':'@pk_url'") } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.7 invite: the third-party path asks no invite level",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL_C(PL_USERS ",'invite':100"), M(BOB, "join"), JR("invite"),
        TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.7 invite: the third-party path asks no membership of the sender",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "leave"), JR("invite"), TPI } },

    { "10,11=4.4.1.1 12=5.4.1.1", T_REFUSE,
      "4.4.1.1 invite: a banned target cannot be invited by third party",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), M(DAVE, "ban"), JR("invite"), TPI } },

    { "10,11=4.4.1.2 12=5.4.1.2", T_REFUSE,
      "4.4.1.2 invite: third_party_invite needs signed",
      MEM_X(BOB, DAVE, "", "{'membership':'invite',"
            "'third_party_invite':{'display_name':'d'}}"),
      { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.1.2 12=5.4.1.2", T_REFUSE,
      "4.4.1.2 invite: a third_party_invite that is not an object",
      MEM_X(BOB, DAVE, "", "{'membership':'invite',"
            "'third_party_invite':true}"),
      { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.1.3 12=5.4.1.3", T_REFUSE,
      "4.4.1.3 invite: signed needs token",
      TPI_INVITE("{'mxid':'" DAVE "','signatures':'@sign'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.1.3 12=5.4.1.3", T_REFUSE,
      "4.4.1.3 invite: signed needs mxid",
      TPI_INVITE("{'token':'tok','signatures':'@sign'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.4 12=5.4.1.4", T_REFUSE,
      "4.4.1.4 invite: mxid must be the state_key",
      TPI_INVITE("{'mxid':'@other:c.org','token':'tok','signatures':'@sign'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.5 12=5.4.1.5", T_REFUSE,
      "4.4.1.5 invite: a third-party invite event for the token",
      TPI_INVITE("{'mxid':'" DAVE "','token':'nope','signatures':'@sign'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.1.5", T_REFUSE,
      "4.4.1.5 invite: the third-party invite passed but for another token",
      "{'type':'m.room.member','sender':'" BOB "','state_key':'" DAVE "',"
      "'auth_events':['#0','#1','#2','#3'],'content':{'membership':'invite',"
      "'third_party_invite':{'display_name':'d','signed':{'mxid':'" DAVE "',"
      "'token':'nope','signatures':'@sign'}}}}",
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.6 12=5.4.1.6", T_REFUSE,
      "4.4.1.6 invite: the sender must have sent the third-party invite",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"),
        TPI_C(ADMIN, "tok", "'public_key':'@pk'") } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.8 invite: signed by a key the third-party invite lacks",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok','signatures':'@sign2'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.8 invite: only ed25519 signatures are checked",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok',"
                 "'signatures':'@sign_other'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.8 invite: signed carries no signature",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.8 invite: a forged signature",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok','signatures':{'"
                 T_IS_SERVER "':{'ed25519:0':'AAAA'}}}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.8 invite: a public key that is not a key",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"),
        TPI_C(BOB, "tok", "'public_key':'not base64!'") } },

    /* invite */

    { "10,11=4.4.2 12=5.4.2", T_REFUSE,
      "4.4.2 invite: the sender must be joined",
      MEM(CAROL, DAVE, "invite"),
      { CREATE, PL, M(CAROL, "leave"), JR("invite") } },

    { "10,11=4.4.3 12=5.4.3", T_REFUSE,
      "4.4.3 invite: not a joined target",
      MEM(BOB, CAROL, "invite"),
      { CREATE, PL, M(BOB, "join"), M(CAROL, "join"), JR("invite") } },

    { "10,11=4.4.3 12=5.4.3", T_REFUSE,
      "4.4.3 invite: not a banned target",
      MEM(BOB, EVE, "invite"),
      { CREATE, PL, M(BOB, "join"), M(EVE, "ban"), JR("invite") } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.4 invite: the sender reaches the invite level",
      MEM(BOB, DAVE, "invite"), { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.4 invite: re-inviting a user who left",
      MEM(CAROL, DAVE, "invite"),
      { CREATE, PL, M(CAROL, "join"), M(DAVE, "leave"), JR("invite") } },

    { "10,11=4.4.5 12=5.4.5", T_REFUSE,
      "4.4.5 invite: the sender is below the invite level",
      MEM(BOB, DAVE, "invite"),
      { CREATE, PL_C(PL_USERS ",'invite':60"), M(BOB, "join"),
        JR("invite") } },

    /* leave */

    { "10,11=4.5.1 12=5.5.1", T_ALLOW,
      "4.5.1 leave: a joined user leaves",
      MEM(CAROL, CAROL, "leave"), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=4.5.1 12=5.5.1", T_ALLOW,
      "4.5.1 leave: an invited user declines",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL, M(DAVE, "invite") } },

    { "10,11=4.5.1 12=5.5.1", T_ALLOW,
      "4.5.1 leave: a knocking user withdraws",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL, M(DAVE, "knock") } },

    { "10,11=4.5.1 12=5.5.1", T_REFUSE,
      "4.5.1 leave: not again once left",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL, M(DAVE, "leave") } },

    { "10,11=4.5.1 12=5.5.1", T_REFUSE,
      "4.5.1 leave: not without ever being a member",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL } },

    { "10,11=4.5.1 12=5.5.1", T_REFUSE,
      "4.5.1 leave: a banned user cannot unban themself",
      MEM(EVE, EVE, "leave"), { CREATE, PL, M(EVE, "ban") } },

    { "10,11=4.5.2 12=5.5.2", T_REFUSE,
      "4.5.2 leave: a kicker must be joined",
      MEM(BOB, CAROL, "leave"),
      { CREATE, PL, M(BOB, "leave"), M(CAROL, "join") } },

    { "10,11=4.5.3 12=5.5.3", T_REFUSE,
      "4.5.3 leave: unbanning needs the ban level",
      MEM(BOB, EVE, "leave"),
      { CREATE, PL_C(PL_USERS ",'ban':60"), M(BOB, "join"), M(EVE, "ban") } },

    { "10,11=4.5.4 12=5.5.4", T_ALLOW,
      "4.5.3 leave: unbanning at the ban and kick levels",
      MEM(BOB, EVE, "leave"),
      { CREATE, PL, M(BOB, "join"), M(EVE, "ban") } },

    { "10,11=4.5.5 12=5.5.5", T_REFUSE,
      "4.5.3 leave: unbanning needs the kick level too",
      MEM(BOB, EVE, "leave"),
      { CREATE, PL_C(PL_USERS ",'kick':60"), M(BOB, "join"), M(EVE, "ban") } },

    { "10,11=4.5.4 12=5.5.4", T_ALLOW,
      "4.5.4 leave: kick by a user above the target at the kick level",
      MEM(BOB, CAROL, "leave"),
      { CREATE, PL, M(BOB, "join"), M(CAROL, "join") } },

    { "10,11=4.5.5 12=5.5.5", T_REFUSE,
      "4.5.5 leave: a kicker below the kick level",
      MEM(CAROL, DAVE, "leave"),
      { CREATE, PL, M(CAROL, "join"), M(DAVE, "join") } },

    { "10,11=4.5.5 12=5.5.5", T_REFUSE,
      "4.5.5 leave: a kicker not above the target",
      MEM(BOB, FRANK, "leave"),
      { CREATE, PL_C("'users':{'" BOB "':50,'" FRANK "':50}"),
        M(BOB, "join"), M(FRANK, "join") } },

    { "10,11=4.5.5 12=5.5.5", T_REFUSE,
      "4.5.5 leave: a kicker below the target",
      MEM(BOB, ADMIN, "leave"),
      { CREATE, PL, M(BOB, "join"), M(ADMIN, "join") } },

    /* ban */

    { "10,11=4.6.1 12=5.6.1", T_REFUSE,
      "4.6.1 ban: the sender must be joined",
      MEM(BOB, CAROL, "ban"),
      { CREATE, PL, M(BOB, "invite"), M(CAROL, "join") } },

    { "10,11=4.6.2 12=5.6.2", T_ALLOW,
      "4.6.2 ban: a user above the target at the ban level",
      MEM(BOB, CAROL, "ban"),
      { CREATE, PL, M(BOB, "join"), M(CAROL, "join") } },

    { "10,11=4.6.2 12=5.6.2", T_ALLOW,
      "4.6.2 ban: a user who never joined",
      MEM(BOB, DAVE, "ban"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=4.6.3 12=5.6.3", T_REFUSE,
      "4.6.3 ban: a sender below the ban level",
      MEM(CAROL, DAVE, "ban"), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=4.6.3 12=5.6.3", T_REFUSE,
      "4.6.3 ban: a sender not above the target",
      MEM(BOB, ADMIN, "ban"),
      { CREATE, PL, M(BOB, "join"), M(ADMIN, "join") } },

    /* knock */

    { "10,11=4.7.1 12=5.7.1", T_REFUSE,
      "4.7.1 knock: not in an invite room",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("invite") } },

    { "10,11=4.7.1 12=5.7.1", T_REFUSE,
      "4.7.1 knock: not in a public room",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("public") } },

    { "10,11=4.7.1 12=5.7.1", T_REFUSE,
      "4.7.1 knock: not in a restricted room",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("restricted") } },

    { "10,11=4.7.1 12=5.7.1", T_REFUSE,
      "4.7.1 knock: not without join rules (invite)",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.1 knock: a knock_restricted room",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock_restricted") } },

    { "10,11=4.7.2 12=5.7.2", T_REFUSE,
      "4.7.2 knock: only for oneself",
      MEM(BOB, DAVE, "knock"), { CREATE, PL, M(BOB, "join"), JR("knock") } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.3 knock: a stranger knocks",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock") } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.3 knock: after leaving",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, M(DAVE, "leave"), JR("knock") } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.3 knock: knocking again",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, M(DAVE, "knock"), JR("knock") } },

    { "10,11=4.7.4 12=5.7.4", T_REFUSE,
      "4.7.4 knock: not when invited",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, M(DAVE, "invite"), JR("knock") } },

    { "10,11=4.7.4 12=5.7.4", T_REFUSE,
      "4.7.4 knock: not when joined",
      MEM(CAROL, CAROL, "knock"),
      { CREATE, PL, M(CAROL, "join"), JR("knock") } },

    { "10,11=4.7.4 12=5.7.4", T_REFUSE,
      "4.7.4 knock: not when banned",
      MEM(EVE, EVE, "knock"), { CREATE, PL, M(EVE, "ban"), JR("knock") } },

    { "10,11=4.8 12=5.8", T_REFUSE,
      "4.8 member: an unknown membership",
      MEM(BOB, BOB, "foo"), { CREATE, PL, M(BOB, "join") } },

    /* ---- rule 5 (v12: 6): the sender must be joined ---- */

    { "10,11=10 12=11", T_ALLOW,
      "5 joined: a joined sender",
      MSG(CAROL), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=5 12=6", T_REFUSE,
      "5 joined: a sender who left",
      MSG(CAROL), { CREATE, PL, M(CAROL, "leave") } },

    { "10,11=5 12=6", T_REFUSE,
      "5 joined: an invited sender",
      MSG(DAVE), { CREATE, PL, M(DAVE, "invite") } },

    { "10,11=5 12=6", T_REFUSE,
      "5 joined: a sender with no membership",
      MSG(DAVE), { CREATE, PL } },

    { "10,11=5 12=6", T_REFUSE,
      "5 joined: state events too",
      STATE_EV(DAVE, "m.room.topic", ""), { CREATE, PL, M(DAVE, "knock") } },

    /* ---- rule 6 (v12: 7): m.room.third_party_invite ---- */

    { "10,11=6.1 12=7.1", T_ALLOW,
      "6.1 third-party invite: at the invite level, below state_default",
      TPI_C(CAROL, "t2", "'public_key':'@pk'"),
      { CREATE, PL, M(CAROL, "join") } },

    { "10,11=6.1 12=7.1", T_REFUSE,
      "6.1 third-party invite: below the invite level",
      TPI_C(BOB, "t2", "'public_key':'@pk'"),
      { CREATE, PL_C(PL_USERS ",'invite':60"), M(BOB, "join") } },

    /* ---- rule 7 (v12: 8): the required power level ---- */

    { "10,11=10 12=11", T_ALLOW,
      "7 required level: events[type] reached",
      STATE_EV(BOB, "m.room.name", ""), { CREATE, PL, M(BOB, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: events[type] not reached",
      STATE_EV(CAROL, "m.room.name", ""), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: state_default for other state events",
      STATE_EV(CAROL, "m.custom", ""), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: events[type] for messages too",
      MSG(CAROL),
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.message':10}"),
        M(CAROL, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: events_default for messages",
      MSG(CAROL),
      { CREATE, PL_C(PL_USERS ",'events_default':1"), M(CAROL, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "7 required level: without power levels a message needs 0",
      MSG(CAROL), { CREATE, M(CAROL, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: without power levels state needs 50",
      STATE_EV(CAROL, "m.custom", ""), { CREATE, M(CAROL, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "7 required level: without power levels the creator may set state",
      STATE_EV(ALICE, "m.custom", ""), { CREATE, M(ALICE, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "7 required level: the redact level is not an auth rule",
      "{'type':'m.room.redaction','sender':'" CAROL "','redacts':'$x',"
      "'content':{'redacts':'$x'}}",
      { CREATE, PL, M(CAROL, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "7 required level: events['m.room.redaction'] applies to redactions",
      "{'type':'m.room.redaction','sender':'" CAROL "','redacts':'$x',"
      "'content':{'redacts':'$x'}}",
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.redaction':10}"),
        M(CAROL, "join") } },

    /* ---- rule 8 (v12: 9): state keys that are user IDs ---- */

    { "10,11=8 12=9", T_REFUSE,
      "8 state_key: another user's ID",
      STATE_EV(BOB, "m.custom", CAROL), { CREATE, PL, M(BOB, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "8 state_key: one's own ID",
      STATE_EV(BOB, "m.custom", BOB), { CREATE, PL, M(BOB, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "8 state_key: an @ not at the start",
      STATE_EV(BOB, "m.custom", "x@y"), { CREATE, PL, M(BOB, "join") } },

    { "12=5.4.1.5", T_REFUSE,
      "5.4.1.5 invite (v12): the third-party invite passed but for another token",
      "{'type':'m.room.member','sender':'" BOB "','state_key':'" DAVE "',"
      "'auth_events':['#1','#2','#3'],'content':{'membership':'invite',"
      "'third_party_invite':{'display_name':'d','signed':{'mxid':'" DAVE "',"
      "'token':'nope','signatures':'@sign'}}}}",
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    /* ---- rule 9 (v12: 10): m.room.power_levels ---- */

    { "10,11=9.1 12=10.1", T_REFUSE,
      "9.1 power levels: ban as a string",
      PL_EV(BOB, PL_USERS ",'ban':'50'"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.1 12=10.1", T_REFUSE,
      "9.1 power levels: invite as a boolean",
      PL_EV(BOB, PL_USERS ",'invite':true"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.1 12=10.1", T_REFUSE,
      "9.1 power levels: users_default as null",
      PL_EV(BOB, PL_USERS ",'users_default':null"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.1 12=10.1", T_REFUSE,
      "9.1 power levels: checked before there are previous ones",
      PL_EV(ALICE, "'state_default':'50'"), { CREATE, M(ALICE, "join") } },

    { "10,11=9.2 12=10.2", T_REFUSE,
      "9.2 power levels: events values are integers",
      PL_EV(BOB, PL_USERS ",'events':{'m.room.name':'50'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.2 12=10.2", T_REFUSE,
      "9.2 power levels: events is an object",
      PL_EV(BOB, PL_USERS ",'events':[]"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.2 12=10.2", T_REFUSE,
      "9.2 power levels: notifications is an object",
      PL_EV(BOB, PL_USERS ",'notifications':5"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.2 12=10.2", T_REFUSE,
      "9.2 power levels: notifications values are integers",
      PL_EV(BOB, PL_USERS ",'notifications':{'room':'50'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.3 12=10.3", T_REFUSE,
      "9.3 power levels: users keys are user IDs",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'carol':0}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.3 12=10.3", T_REFUSE,
      "9.3 power levels: users values are integers",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':'50'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.3 12=10.3", T_REFUSE,
      "9.3 power levels: users is an object",
      PL_EV(BOB, "'users':['" BOB "']"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.3 power levels: integers everywhere",
      PL_EV(BOB, PL_USERS "," PL_REST ",'notifications':{'room':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "12=10.4", T_REFUSE,
      "10.4 power levels (v12): users must not name the creator",
      PL_EV(ADMIN, "'users':{'" ADMIN "':100,'" BOB "':50,'" ALICE "':100}"),
      { CREATE, PL, M(ADMIN, "join") } },

    { "12=10.4", T_REFUSE,
      "10.4 power levels (v12): users must not name an additional creator",
      PL_EV(ADMIN, "'users':{'" ADMIN "':100,'" BOB "':50}"),
      { CREATE_AC, PL_C("'users':{'" ADMIN "':100}"), M(ADMIN, "join") } },

    { "10,11=9.10", T_ALLOW,
      "10.4 power levels (v12): before v12 the creator may be listed",
      PL_EV(ADMIN, "'users':{'" ADMIN "':100,'" BOB "':50,'" ALICE "':100}"),
      { CREATE, PL, M(ADMIN, "join") } },

    { "10,11=9.4 12=10.5", T_ALLOW,
      "9.4 power levels: the first one",
      PL_EV(ALICE, "'users':{'" ADMIN "':100}"), { CREATE, M(ALICE, "join") } },

    { "10,11=9.4 12=10.5", T_ALLOW,
      "9.4 power levels: the first one may set anything",
      PL_EV(ALICE, "'users':{'" ADMIN "':1000},'ban':1000,"
            "'events':{'m.room.name':1000}"),
      { CREATE, M(ALICE, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.5 power levels: changing kick within the sender's level",
      PL_EV(BOB, PL_USERS ",'users_default':0,'events_default':0,"
            "'state_default':50,'ban':50,'kick':40,'redact':50,'invite':0,"
            "'events':{'m.room.name':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.5 power levels: removing a value at the sender's level",
      PL_EV(BOB, PL_USERS ",'users_default':0,'events_default':0,"
            "'ban':50,'kick':50,'redact':50,'invite':0,"
            "'events':{'m.room.name':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.5.1 12=10.6.1", T_REFUSE,
      "9.5.1 power levels: changing a value above the sender's level",
      PL_EV(BOB, PL_USERS ",'redact':40"),
      { CREATE, PL_C(PL_USERS ",'redact':60"), M(BOB, "join") } },

    { "10,11=9.5.1 12=10.6.1", T_REFUSE,
      "9.5.1 power levels: removing a value above the sender's level",
      PL_EV(BOB, PL_USERS),
      { CREATE, PL_C(PL_USERS ",'redact':60"), M(BOB, "join") } },

    { "10,11=9.5.2 12=10.6.2", T_REFUSE,
      "9.5.2 power levels: a new value above the sender's level",
      PL_EV(BOB, PL_USERS ",'ban':60"),
      { CREATE, PL_C(PL_USERS ",'ban':50"), M(BOB, "join") } },

    { "10,11=9.5.2 12=10.6.2", T_REFUSE,
      "9.5.2 power levels: an added value above the sender's level",
      PL_EV(BOB, PL_USERS ",'ban':60"), { CREATE, PL_C(PL_USERS), M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.5.1 power levels: an added value has no current value to compare",
      PL_EV(CAROL, PL_USERS ",'events':{'m.room.power_levels':0},'kick':0"),
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.power_levels':0}"),
        M(CAROL, "join") } },

    { "10,11=9.6.1 12=10.7.1", T_REFUSE,
      "9.6.1 power levels: changing an events entry above the sender",
      PL_EV(BOB, PL_USERS ",'events':{'m.room.topic':40}"),
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.topic':60}"),
        M(BOB, "join") } },

    { "10,11=9.6.1 12=10.7.1", T_REFUSE,
      "9.6.1 power levels: removing an events entry above the sender",
      PL_EV(BOB, PL_USERS ",'events':{}"),
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.topic':60}"),
        M(BOB, "join") } },

    { "10,11=9.6.1 12=10.7.1", T_REFUSE,
      "9.6.1 power levels: removing a notifications entry above the sender",
      PL_EV(BOB, PL_USERS),
      { CREATE, PL_C(PL_USERS ",'notifications':{'room':60}"),
        M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.6.1 power levels: keeping an events entry above the sender",
      PL_EV(BOB, PL_USERS ",'events':{'m.room.topic':60,'m.room.name':10}"),
      { CREATE, PL_C(PL_USERS ",'events':{'m.room.topic':60}"),
        M(BOB, "join") } },

    { "10,11=9.7.1 12=10.8.1", T_REFUSE,
      "9.7.1 power levels: adding an events entry above the sender",
      PL_EV(BOB, PL_USERS ",'events':{'m.room.name':50,'m.room.topic':60}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.7.1 12=10.8.1", T_REFUSE,
      "9.7.1 power levels: adding a notifications entry above the sender",
      PL_EV(BOB, PL_USERS "," PL_REST ",'notifications':{'room':60}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.7.1 12=10.8.1", T_REFUSE,
      "9.7.1 power levels: raising a notifications entry above the sender",
      PL_EV(BOB, PL_USERS ",'notifications':{'room':51}"),
      { CREATE, PL_C(PL_USERS ",'notifications':{'room':50}"),
        M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.7.1 power levels: adding a notifications entry at the sender's level",
      PL_EV(BOB, PL_USERS "," PL_REST ",'notifications':{'room':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.8.1 12=10.9.1", T_REFUSE,
      "9.8.1 power levels: removing a user above the sender",
      PL_EV(BOB, "'users':{'" BOB "':50}," PL_REST),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.8.1 12=10.9.1", T_REFUSE,
      "9.8.1 power levels: lowering a user at the sender's level",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'" FRANK "':10}"),
      { CREATE, PL_C("'users':{'" ADMIN "':100,'" BOB "':50,'" FRANK "':50}"),
        M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.8.1 power levels: lowering a user below the sender",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'" FRANK "':0}"),
      { CREATE, PL_C("'users':{'" ADMIN "':100,'" BOB "':50,'" FRANK "':49}"),
        M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.8.1 power levels: the sender lowers their own level",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':10}," PL_REST),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.9.1 12=10.10.1", T_REFUSE,
      "9.9.1 power levels: raising a user above the sender",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'" CAROL "':60}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.9.1 12=10.10.1", T_REFUSE,
      "9.9.1 power levels: the sender raises their own level",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':51}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.9.1 power levels: raising a user to the sender's level",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'" CAROL "':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=7 12=8", T_REFUSE,
      "9 power levels: a sender below the required level changes nothing",
      PL_EV(CAROL, PL_USERS "," PL_REST), { CREATE, PL, M(CAROL, "join") } },

    /* ---- v11: the creator is the create event's sender ---- */

    { "10=10", T_ALLOW,
      "creator (v10): content.creator has 100 without power levels",
      STATE_EV(BOB, "m.custom", ""), { CREATE_BOBC, M(BOB, "join") } },

    { "11=7 12=8", T_REFUSE,
      "creator (v11+): content.creator means nothing",
      STATE_EV(BOB, "m.custom", ""), { CREATE_BOBC, M(BOB, "join") } },

    { "10=7", T_REFUSE,
      "creator (v10): the create event's sender is not the creator",
      STATE_EV(ALICE, "m.custom", ""), { CREATE_BOBC, M(ALICE, "join") } },

    { "11=10 12=11", T_ALLOW,
      "creator (v11+): the create event's sender is",
      STATE_EV(ALICE, "m.custom", ""), { CREATE_BOBC, M(ALICE, "join") } },

    /* ---- v12: creators outrank every power level ---- */

    { "12=10.11", T_ALLOW,
      "creators (v12): the creator changes anything in power levels",
      PL_EV(ALICE, "'users':{'" ADMIN "':1000000,'" BOB "':50},"
            "'ban':1000000,'events':{'m.room.name':1000000}"),
      { CREATE, PL, M(ALICE, "join") } },

    { "10,11=7", T_REFUSE,
      "creators (v12): before v12 the creator is only their listed level",
      PL_EV(ALICE, "'users':{'" ADMIN "':100,'" BOB "':50}"),
      { CREATE, PL, M(ALICE, "join") } },

    { "12=5.6.2", T_ALLOW,
      "creators (v12): an additional creator bans a user at 100",
      MEM(BOB, ADMIN, "ban"),
      { CREATE_AC, PL, M(BOB, "join"), M(ADMIN, "join") } },

    { "10,11=4.6.3", T_REFUSE,
      "creators (v12): before v12 additional_creators means nothing",
      MEM(BOB, ADMIN, "ban"),
      { CREATE_AC, PL, M(BOB, "join"), M(ADMIN, "join") } },

    { "12=5.5.5", T_REFUSE,
      "creators (v12): nobody kicks a creator",
      MEM(ADMIN, ALICE, "leave"),
      { CREATE, PL, M(ADMIN, "join"), M(ALICE, "join") } },

    { "12=5.6.3", T_REFUSE,
      "creators (v12): creators cannot ban each other",
      MEM(BOB, ALICE, "ban"),
      { CREATE_AC, PL, M(BOB, "join"), M(ALICE, "join") } },

    { "10,11=4.5.4", T_ALLOW,
      "creators (v12): before v12 the creator can be kicked",
      MEM(ADMIN, ALICE, "leave"),
      { CREATE, PL, M(ADMIN, "join"), M(ALICE, "join") } },

    { "12=11", T_ALLOW,
      "creators (v12): an additional creator sets state without power levels",
      STATE_EV(BOB, "m.custom", ""), { CREATE_AC, M(BOB, "join") } },

    /* ---- v6 to v9: what the version flags change ---- */

    { "6=4.2.5", T_ALLOW,
      "4.2.5 join (v6): public rule",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("public") } },

    { "6=4.2.6", T_REFUSE,
      "4.2.4 join (v6): knock is no join rule yet",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite"), JR("knock") } },

    { "7=4.2.4 8,9=4.3.4", T_ALLOW,
      "4.2.4 join (v7+): knock rule, invited",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "invite"), JR("knock") } },

    { "6=4.6", T_REFUSE,
      "4.6 member (v6): knock is an unknown membership",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock") } },

    { "7=4.6.3 8,9=4.7.3", T_ALLOW,
      "4.6.3 knock (v7+): a stranger knocks",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock") } },

    { "7=4.7 8,9=4.8", T_REFUSE,
      "4.7 member (v7+): an unknown membership",
      MEM(BOB, BOB, "foo"), { CREATE, PL, M(BOB, "join") } },

    { "6=4.4.1", T_REFUSE,
      "4.4.1 leave (v6): no leaving from a knock",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL, M(DAVE, "knock") } },

    { "7=4.4.1 8,9=4.5.1", T_ALLOW,
      "4.4.1 leave (v7+): leaving from a knock",
      MEM(DAVE, DAVE, "leave"), { CREATE, PL, M(DAVE, "knock") } },

    { "6,7=4.2.6", T_REFUSE,
      "4.2.6 join (v6, v7): restricted is no join rule yet",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("restricted") } },

    { "8,9=4.3.5.3", T_ALLOW,
      "4.3.5.3 join (v8+): restricted rule, authorised",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("restricted"), M(BOB, "join") } },

    { "7=4.2.5", T_ALLOW,
      "4.2.1 member (v7): join_authorised_via_users_server means nothing",
      MEM_X(DAVE, DAVE, SIGNED_DAVE, VIA(BOB)),
      { CREATE, PL, JR("public") } },

    { "8,9=4.2.1", T_REFUSE,
      "4.2.1 member (v8+): join_authorised_via_users_server needs its signature",
      MEM_X(DAVE, DAVE, SIGNED_DAVE, VIA(BOB)),
      { CREATE, PL, JR("public"), M(BOB, "join") } },

    { "8,9=4.3.7", T_REFUSE,
      "4.3.5 join (v8, v9): knock_restricted is no join rule yet",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("knock_restricted"), M(BOB, "join") } },

    { "7=4.6.1 8,9=4.7.1", T_REFUSE,
      "4.7.1 knock (v7 to v9): knock_restricted does not allow knocking",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock_restricted") } },

    { "9=9.8", T_ALLOW,
      "9.3 power levels (v9): \" +50 \" is the same level as 50",
      PL_EV(BOB, PL_USERS ",'ban':' +50 ','kick':'050'"),
      { CREATE, PL, M(BOB, "join") } },

    { "10=9.1", T_REFUSE,
      "9.1 power levels (v10): no strings",
      PL_EV(BOB, PL_USERS ",'ban':' +50 ','kick':'050'"),
      { CREATE, PL, M(BOB, "join") } },

    { "6,7,8,9=9.3.2", T_REFUSE,
      "9.3.2 power levels (v6 to v9): a new string value above the sender",
      PL_EV(BOB, PL_USERS ",'ban':'60'"), { CREATE, PL, M(BOB, "join") } },

    { "9=9.1", T_REFUSE,
      "9.1 power levels (v9): users values are integers or integer strings",
      PL_EV(BOB, "'users':{'" ADMIN "':100,'" BOB "':50,'" CAROL "':'ten'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "9=9.8", T_ALLOW,
      "9.1 power levels (v9): users values as integer strings",
      PL_EV(BOB, "'users':{'" ADMIN "':'100','" BOB "':50,'" CAROL "':'-10'}"),
      { CREATE, PL, M(BOB, "join") } },

    { "9=9.6.1", T_REFUSE,
      "9.6.1 power levels (v9): a string current level counts",
      PL_EV(BOB, "'users':{'" BOB "':50}"),
      { CREATE, PL_C("'users':{'" ADMIN "':'100','" BOB "':'50'}"),
        M(BOB, "join") } },

    { "9=4.5.4", T_ALLOW,
      "4.5.4 leave (v9): string levels in the current power levels",
      MEM(BOB, CAROL, "leave"),
      { CREATE, PL_C("'users':{'" BOB "':' 50'},'kick':'+50'"),
        M(BOB, "join"), M(CAROL, "join") } },

    { "9=4.6.2", T_REFUSE,
      "4.6.2 ban (v9): a ban level that is no integer cannot be reached",
      MEM(BOB, CAROL, "ban"),
      { CREATE, PL_C(PL_USERS ",'ban':'fifty'"), M(BOB, "join"),
        M(CAROL, "join") } },

    /*
     * ---- the other side of each rule: the condition that does not hold,
     * and the rule that decides instead ----
     */

    { "10=1.5 11=1.4 12=1.5", T_ALLOW,
      "1.1 create: an empty prev_events",
      "{'type':'m.room.create','state_key':'','sender':'" ALICE "',"
      "'prev_events':[],'content':{'creator':'" ALICE "'}}",
      { NULL } },

    { "12=1.5", T_ALLOW,
      "1.2 create (v12): no room_id", CREATE, { NULL } },

    { "10,11=10 12=11", T_ALLOW,
      "2.1 auth events: distinct (type, state_key) pairs",
      MSG(BOB), { CREATE, PL, M(BOB, "join") } },

    { "10,11=10", T_ALLOW,
      "2.4 auth events: the create event is cited",
      "{'type':'m.room.message','sender':'" BOB "','auth_events':"
      "['#0','#1','#2'],'content':{}}",
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=10 12=11", T_ALLOW,
      "2.5 (v12: 3.4) auth events: all in the room",
      MSG(BOB), { CREATE, PL, M(BOB, "join") } },

    { "10,11=4.5.1 12=5.5.1", T_ALLOW,
      "4.1 member: state_key and membership present",
      MEM(CAROL, CAROL, "leave"), { CREATE, PL, M(CAROL, "join") } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "4.3.2 join: the sender is the state_key",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("public") } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "4.3.3 join: a user who left is not banned",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "leave"), JR("public") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.1 join: restricted rule, neither invited nor joined",
      MEM(DAVE, DAVE, "join"),
      { CREATE, PL, M(DAVE, "leave"), JR("restricted") } },

    { "10,11=4.3.5.3 12=5.3.5.3", T_ALLOW,
      "4.3.5.2 join: authorised by a joined user at the invite level",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(BOB)),
      { CREATE, PL, JR("restricted"), M(BOB, "join") } },

    { "10,11=4.3.5.2 12=5.3.5.2", T_REFUSE,
      "4.3.5.3 join: only once 4.3.5.2 has passed",
      MEM_X(DAVE, DAVE, SIGNED_BOTH, VIA(CAROL)),
      { CREATE, PL_C(PL_USERS ",'invite':1"), JR("restricted"),
        M(CAROL, "join") } },

    { "10,11=4.3.7 12=5.3.7", T_REFUSE,
      "4.3.6 join: not a public room",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, JR("invite") } },

    { "10,11=4.3.6 12=5.3.6", T_ALLOW,
      "4.3.7 join: not reached when a rule allows",
      MEM(DAVE, DAVE, "join"), { CREATE, PL, M(DAVE, "leave"), JR("public") } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.1 invite: a target who left may be invited by third party",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), M(DAVE, "leave"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.2 invite: third_party_invite with signed",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.3 invite: signed with mxid and token",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.4 invite: mxid is the state_key",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.5 invite: the token's third-party invite is there",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.6 invite: the sender sent the third-party invite",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.8 12=5.4.1.8", T_REFUSE,
      "4.4.1.7 invite: a signature by another identity server key",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok','signatures':'@sign2'}"),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.1.7 12=5.4.1.7", T_ALLOW,
      "4.4.1.8 invite: not reached with a matching signature",
      TPI_INVITE(SIGNED_OK),
      { CREATE, PL, M(BOB, "join"), JR("invite"), TPI } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.2 invite: a joined sender",
      MEM(BOB, DAVE, "invite"), { CREATE, PL, M(BOB, "join"), JR("invite") } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.3 invite: a target who left",
      MEM(BOB, DAVE, "invite"),
      { CREATE, PL, M(BOB, "join"), M(DAVE, "leave"), JR("invite") } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.3 invite: an invited target may be invited again",
      MEM(BOB, DAVE, "invite"),
      { CREATE, PL, M(BOB, "join"), M(DAVE, "invite"), JR("invite") } },

    { "10,11=4.4.5 12=5.4.5", T_REFUSE,
      "4.4.4 invite: one below the invite level",
      MEM(BOB, DAVE, "invite"),
      { CREATE, PL_C(PL_USERS ",'invite':51"), M(BOB, "join"),
        JR("invite") } },

    { "10,11=4.4.4 12=5.4.4", T_ALLOW,
      "4.4.5 invite: not reached at the invite level",
      MEM(BOB, DAVE, "invite"),
      { CREATE, PL_C(PL_USERS ",'invite':50"), M(BOB, "join"),
        JR("invite") } },

    { "10,11=4.5.4 12=5.5.4", T_ALLOW,
      "4.5.2 leave: a joined kicker",
      MEM(BOB, CAROL, "leave"),
      { CREATE, PL, M(BOB, "join"), M(CAROL, "join") } },

    { "10,11=4.5.5 12=5.5.5", T_REFUSE,
      "4.5.4 leave: a kicker one below the kick level",
      MEM(BOB, CAROL, "leave"),
      { CREATE, PL_C(PL_USERS ",'kick':51"), M(BOB, "join"),
        M(CAROL, "join") } },

    { "10,11=4.5.4 12=5.5.4", T_ALLOW,
      "4.5.5 leave: not reached when the kicker outranks the target",
      MEM(ADMIN, BOB, "leave"),
      { CREATE, PL, M(ADMIN, "join"), M(BOB, "join") } },

    { "10,11=4.6.2 12=5.6.2", T_ALLOW,
      "4.6.1 ban: a joined sender",
      MEM(ADMIN, BOB, "ban"), { CREATE, PL, M(ADMIN, "join"), M(BOB, "join") } },

    { "10,11=4.6.3 12=5.6.3", T_REFUSE,
      "4.6.2 ban: a sender one below the ban level",
      MEM(BOB, CAROL, "ban"),
      { CREATE, PL_C(PL_USERS ",'ban':51"), M(BOB, "join"),
        M(CAROL, "join") } },

    { "10,11=4.6.2 12=5.6.2", T_ALLOW,
      "4.6.3 ban: not reached when the sender may ban",
      MEM(BOB, EVE, "ban"), { CREATE, PL, M(BOB, "join"), M(EVE, "ban") } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.2 knock: for oneself",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock") } },

    { "10,11=4.7.4 12=5.7.4", T_REFUSE,
      "4.7.3 knock: not for the invited",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, M(DAVE, "invite"), JR("knock") } },

    { "10,11=4.7.3 12=5.7.3", T_ALLOW,
      "4.7.4 knock: not reached for a stranger",
      MEM(DAVE, DAVE, "knock"), { CREATE, PL, JR("knock") } },

    { "10,11=4.5.1 12=5.5.1", T_ALLOW,
      "4.8 member: leave is a known membership",
      MEM(BOB, BOB, "leave"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.1 power levels: the seven levels as integers",
      PL_EV(BOB, PL_USERS "," PL_REST), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.2 power levels: events and notifications of integers",
      PL_EV(BOB, PL_USERS ",'events':{'m.room.name':50,'x':-5},"
            "'notifications':{'room':50}"),
      { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.5.2 12=10.6.2", T_REFUSE,
      "9.4 power levels: later ones are checked against the previous",
      PL_EV(BOB, PL_USERS ",'ban':60"), { CREATE, PL, M(BOB, "join") } },

    { "10,11=9.10 12=10.11", T_ALLOW,
      "9.5.2 power levels: a new value at the sender's level",
      PL_EV(BOB, PL_USERS ",'ban':50,'kick':50"),
      { CREATE, PL_C(PL_USERS ",'ban':10"), M(BOB, "join") } },

    { "12=10.11", T_ALLOW,
      "10.4 power levels (v12): users naming no creator",
      PL_EV(ADMIN, "'users':{'" ADMIN "':100,'" CAROL "':10}"),
      { CREATE_AC, PL_C("'users':{'" ADMIN "':100}"), M(ADMIN, "join") } },
};


static json_t *t_parse(const char *text);
static int t_keys_init(t_keys_t *keys);
static int t_substitute(json_t *v, const t_keys_t *keys);
static void t_ids(json_t *a, mx_event_t **state, size_t n);
static mx_event_t *t_build(const char *text, const mx_room_version_t *v,
    const char *room_id, const t_keys_t *keys, mx_event_t **state,
    size_t n, json_t *default_auth);
static int t_is_create(const char *text);
static void t_run(tap_t *t, const t_row_t *row, const mx_room_version_t *v,
    const char *rule, const t_keys_t *keys);
static void t_walk(tap_t *t, const t_keys_t *keys);
static void t_types_for_event(tap_t *t, const t_keys_t *keys);
static void t_power_level(tap_t *t, const t_keys_t *keys);
static void t_redaction(tap_t *t, const t_keys_t *keys);
static void t_unsupported(tap_t *t, const t_keys_t *keys);
static const mx_room_version_t *t_version(const char *id);


int
main(void)
{
    tap_t     t;
    t_keys_t  keys;

    memset(&t, 0, sizeof(tap_t));

    if (t_keys_init(&keys) != MX_OK) {
        tap_ok(&t, 0, "identity server test keys");
        return tap_done(&t);
    }

    t_walk(&t, &keys);
    t_types_for_event(&t, &keys);
    t_power_level(&t, &keys);
    t_redaction(&t, &keys);
    t_unsupported(&t, &keys);

    return tap_done(&t);
}


static void
t_walk(tap_t *t, const t_keys_t *keys)
{
    size_t                      i, len;
    char                        vers[32], rule[32], *v, *save;
    const char                 *p, *eq, *end;
    const mx_room_version_t    *ver;

    for (i = 0; i < sizeof(t_rows) / sizeof(t_rows[0]); i++) {

        /* "10,11=4.3.2 12=5.3.2": each token names versions and a rule */

        for (p = t_rows[i].expect; *p != '\0'; p = *end ? end + 1 : end) {
            end = strchr(p, ' ');
            if (end == NULL) {
                end = p + strlen(p);
            }

            eq = memchr(p, '=', (size_t) (end - p));

            if (eq == NULL || (size_t) (eq - p) >= sizeof(vers)
                || (size_t) (end - eq - 1) >= sizeof(rule))
            {
                tap_ok(t, 0, "row %zu: bad expectation \"%s\"", i,
                       t_rows[i].expect);
                break;
            }

            len = (size_t) (eq - p);
            memcpy(vers, p, len);
            vers[len] = '\0';
            len = (size_t) (end - eq - 1);
            memcpy(rule, eq + 1, len);
            rule[len] = '\0';

            for (v = strtok_r(vers, ",", &save); v != NULL;
                 v = strtok_r(NULL, ",", &save))
            {
                ver = t_version(v);

                if (ver == NULL) {
                    tap_ok(t, 0, "row %zu: no room version %s", i, v);
                    continue;
                }

                t_run(t, &t_rows[i], ver, rule, keys);
            }
        }
    }
}


static void
t_run(tap_t *t, const t_row_t *row, const mx_room_version_t *v,
    const char *rule, const t_keys_t *keys)
{
    int          rc, ok;
    char         room_id[MX_EVENT_ID_LEN + 1], want[48];
    size_t       i, n;
    json_t      *auth;
    mx_err_t     why;
    mx_event_t  *state[T_MAX_STATE], *ev;

    n = 0;
    ev = NULL;
    auth = json_array();
    memset(state, 0, sizeof(state));

    for (n = 0; n < T_MAX_STATE && row->state[n] != NULL; n++) {
        /* counted */
    }

    /* v12: the create event comes first, it names the room */

    strcpy(room_id, v->room_id_from_create ? "!nocreate" : "!r:a.org");

    for (i = 0; i < n; i++) {
        if (v->room_id_from_create && t_is_create(row->state[i])) {
            state[i] = t_build(row->state[i], v, NULL, keys, state, 0, NULL);
            if (state[i] == NULL) {
                goto failed;
            }

            strcpy(room_id, state[i]->room_id);
        }
    }

    for (i = 0; i < n; i++) {
        if (state[i] == NULL) {
            state[i] = t_build(row->state[i], v, room_id, keys, state, 0,
                               NULL);
            if (state[i] == NULL) {
                goto failed;
            }
        }

        if (!(v->room_id_from_create
              && strcmp(state[i]->type, "m.room.create") == 0))
        {
            json_array_append_new(auth, json_string(state[i]->event_id));
        }
    }

    ev = t_build(row->event, v, room_id, keys, state, n, auth);
    if (ev == NULL) {
        goto failed;
    }

    memset(&why, 0, sizeof(mx_err_t));
    rc = mx_auth_check(ev, (const mx_event_t *const *) state, n, &why);

    snprintf(want, sizeof(want), "rule %s:", rule);

    ok = (rc == MX_OK) == (row->allowed == T_ALLOW)
         && strncmp(why.msg, want, strlen(want)) == 0;

    tap_ok(t, ok, "v%s %s: %s by %s", v->id, row->name,
           row->allowed == T_ALLOW ? "allowed" : "refused", want);

    if (!ok) {
        tap_diag("got %s: %s", rc == MX_OK ? "allowed" : "refused", why.msg);
    }

    goto done;

failed:

    tap_ok(t, 0, "v%s %s: the row's events build", v->id, row->name);

done:

    for (i = 0; i < n; i++) {
        mx_event_free(state[i]);
    }

    mx_event_free(ev);
    json_decref(auth);
}


/*
 * One event of a row: parsed, placeholders replaced, the fields no rule
 * reads filled in, then built by the event parser.
 */
static mx_event_t *
t_build(const char *text, const mx_room_version_t *v, const char *room_id,
    const t_keys_t *keys, mx_event_t **state, size_t n, json_t *default_auth)
{
    json_t      *pdu, *create_room_id;
    mx_err_t     err;
    mx_event_t  *ev;
    const char  *type;

    pdu = t_parse(text);
    if (pdu == NULL) {
        return NULL;
    }

    if (t_substitute(pdu, keys) != MX_OK) {
        json_decref(pdu);
        return NULL;
    }

    type = json_string_value(json_object_get(pdu, "type"));
    create_room_id = NULL;

    if (v->room_id_from_create && type != NULL
        && strcmp(type, "m.room.create") == 0)
    {
        /*
         * The event parser refuses a v12 create event with a room_id, so
         * that rule 1.2 sees one only if it is put back after parsing.
         */
        create_room_id = json_incref(json_object_get(pdu, "room_id"));
        json_object_del(pdu, "room_id");

    } else if (json_object_get(pdu, "room_id") == NULL && room_id != NULL) {
        json_object_set_new(pdu, "room_id", json_string(room_id));
    }

    if (json_object_get(pdu, "auth_events") == NULL) {
        json_object_set_new(pdu, "auth_events",
                            default_auth && strcmp(type ? type : "",
                                                   "m.room.create") != 0
                            ? json_copy(default_auth) : json_array());
    }

    if (json_object_get(pdu, "prev_events") == NULL) {
        json_object_set_new(pdu, "prev_events", json_array());
    }

    t_ids(json_object_get(pdu, "auth_events"), state, n);
    t_ids(json_object_get(pdu, "prev_events"), state, n);

    if (json_object_get(pdu, "hashes") == NULL) {
        json_object_set_new(pdu, "hashes",
                            json_pack("{s:s}", "sha256", "x"));
    }

    if (json_object_get(pdu, "signatures") == NULL) {
        json_object_set_new(pdu, "signatures", json_object());
    }

    json_object_set_new(pdu, "depth", json_integer(1));
    json_object_set_new(pdu, "origin_server_ts", json_integer(1));

    if (mx_event_from_json(pdu, v, &ev, &err) != MX_OK) {
        tap_diag("cannot build %s: %s", text, err.msg);
        json_decref(pdu);
        json_decref(create_room_id);
        return NULL;
    }

    if (create_room_id != NULL) {
        json_object_set_new(ev->json, "room_id", create_room_id);
    }

    json_decref(pdu);

    return ev;
}


static int
t_is_create(const char *text)
{
    int          yes;
    json_t      *j;
    const char  *type;

    j = t_parse(text);
    type = json_string_value(json_object_get(j, "type"));
    yes = type != NULL && strcmp(type, "m.room.create") == 0;
    json_decref(j);

    return yes;
}


static json_t *
t_parse(const char *text)
{
    char          *s, *p;
    json_t        *j;
    json_error_t   e;

    s = strdup(text);
    if (s == NULL) {
        return NULL;
    }

    for (p = s; *p != '\0'; p++) {
        if (*p == '\'') {
            *p = '"';
        }
    }

    j = json_loads(s, JSON_REJECT_DUPLICATES, &e);

    if (j == NULL) {
        tap_diag("bad test JSON (%s): %s", e.text, s);
    }

    free(s);

    return j;
}


/* "#N" in an array of event IDs: the ID of state event N */

static void
t_ids(json_t *a, mx_event_t **state, size_t n)
{
    size_t       i;
    unsigned     k;
    const char  *s;

    for (i = 0; i < json_array_size(a); i++) {
        s = json_string_value(json_array_get(a, i));

        if (s != NULL && s[0] == '#' && sscanf(s + 1, "%u", &k) == 1
            && k < n && state[k] != NULL)
        {
            json_array_set_new(a, i, json_string(state[k]->event_id));
        }
    }
}


static int
t_substitute(json_t *v, const t_keys_t *keys)
{
    int                      other;
    size_t                   i;
    json_t                  *item, *sigs;
    mx_err_t                 err;
    const char              *key, *s, *with;
    const mx_signing_key_t  *signer;

    if (json_is_object(v)) {
        json_object_foreach(v, key, item) {
            s = json_string_value(item);
            with = s == NULL ? NULL
                   : strcmp(s, "@pk") == 0 ? keys->pk1
                   : strcmp(s, "@pk2") == 0 ? keys->pk2
                   : strcmp(s, "@pk_url") == 0 ? keys->pk1_url : NULL;

            if (with != NULL) {
                json_object_set_new(v, key, json_string(with));

            } else if (t_substitute(item, keys) != MX_OK) {
                return MX_ERROR;
            }
        }

        sigs = json_object_get(v, "signatures");
        s = json_string_value(sigs);
        signer = s == NULL ? NULL
                 : strcmp(s, "@sign2") == 0 ? &keys->key2
                 : strncmp(s, "@sign", 5) == 0 ? &keys->key1 : NULL;

        if (signer != NULL) {
            other = strcmp(s, "@sign_other") == 0;
            json_object_del(v, "signatures");

            if (mx_json_sign(v, T_IS_SERVER, signer, &err) != MX_OK) {
                tap_diag("cannot sign: %s", err.msg);
                return MX_ERROR;
            }

            /* the same signature, filed under another algorithm */
            if (other) {
                sigs = json_object_get(json_object_get(v, "signatures"),
                                       T_IS_SERVER);
                json_object_set(sigs, "curve25519:0",
                                json_object_get(sigs, "ed25519:0"));
                json_object_del(sigs, "ed25519:0");
            }
        }

        return MX_OK;
    }

    for (i = 0; i < json_array_size(v); i++) {
        item = json_array_get(v, i);
        s = json_string_value(item);
        with = s == NULL ? NULL
               : strcmp(s, "@pk") == 0 ? keys->pk1
               : strcmp(s, "@pk2") == 0 ? keys->pk2
               : strcmp(s, "@pk_url") == 0 ? keys->pk1_url : NULL;

        if (with != NULL) {
            json_array_set_new(v, i, json_string(with));

        } else if (t_substitute(item, keys) != MX_OK) {
            return MX_ERROR;
        }
    }

    return MX_OK;
}


static int
t_keys_init(t_keys_t *keys)
{
    size_t          len;
    mx_err_t        err;
    unsigned char   seed[MX_ED25519_SEED_LEN];

    /* this seed's public key has a "+" and a "/": url-safe base64 differs */
    memset(seed, 0x02, sizeof(seed));

    if (mx_signing_key_from_seed(&keys->key1, "0", 1, seed, &err) != MX_OK) {
        return MX_ERROR;
    }

    memset(seed, 0x01, sizeof(seed));

    if (mx_signing_key_from_seed(&keys->key2, "0", 1, seed, &err) != MX_OK) {
        return MX_ERROR;
    }

    mx_signing_key_public_base64(&keys->key1, keys->pk1);
    mx_signing_key_public_base64(&keys->key2, keys->pk2);

    len = mx_base64_encode(keys->pk1_url, keys->key1.public_key,
                           MX_ED25519_PK_LEN, MX_BASE64_URLSAFE);
    keys->pk1_url[len] = '\0';

    if (strcmp(keys->pk1, keys->pk1_url) == 0) {
        tap_diag("the url-safe key is the standard one: a weaker test");
    }

    return MX_OK;
}


static const mx_room_version_t *
t_version(const char *id)
{
    return mx_room_version_find(id, strlen(id));
}


/* ---- mx_auth_types_for_event() ---- */

typedef struct {
    const char     *version;
    const char     *name;
    const char     *event;
    const char     *want;       /* "type|state_key" joined by spaces */
} t_types_t;


static const t_types_t  t_types[] = {

    { "10", "create: no auth events", CREATE, "" },

    { "10", "message: create, power levels, sender",
      MSG(BOB),
      "m.room.create| m.room.power_levels| m.room.member|" BOB },

    { "12", "message (v12): no create event",
      MSG(BOB), "m.room.power_levels| m.room.member|" BOB },

    { "10", "join of oneself: the member event once",
      MEM(DAVE, DAVE, "join"),
      "m.room.create| m.room.power_levels| m.room.member|" DAVE
      " m.room.join_rules|" },

    { "10", "invite: target and join rules",
      MEM(BOB, DAVE, "invite"),
      "m.room.create| m.room.power_levels| m.room.member|" BOB
      " m.room.member|" DAVE " m.room.join_rules|" },

    { "10", "invite by third party: the m.room.third_party_invite",
      TPI_INVITE("{'mxid':'" DAVE "','token':'tok'}"),
      "m.room.create| m.room.power_levels| m.room.member|" BOB
      " m.room.member|" DAVE " m.room.join_rules|"
      " m.room.third_party_invite|tok" },

    { "10", "knock: join rules",
      MEM(DAVE, DAVE, "knock"),
      "m.room.create| m.room.power_levels| m.room.member|" DAVE
      " m.room.join_rules|" },

    { "10", "leave: no join rules",
      MEM(BOB, CAROL, "leave"),
      "m.room.create| m.room.power_levels| m.room.member|" BOB
      " m.room.member|" CAROL },

    { "10", "restricted join: the authorising user's member event",
      MEM_X(DAVE, DAVE, "", VIA(BOB)),
      "m.room.create| m.room.power_levels| m.room.member|" DAVE
      " m.room.join_rules| m.room.member|" BOB },

    { "7", "restricted join (v7): no restricted rooms, no authorising user",
      MEM_X(DAVE, DAVE, "", VIA(BOB)),
      "m.room.create| m.room.power_levels| m.room.member|" DAVE
      " m.room.join_rules|" },

    { "12", "restricted join (v12): all of it but the create event",
      MEM_X(DAVE, DAVE, "", VIA(BOB)),
      "m.room.power_levels| m.room.member|" DAVE
      " m.room.join_rules| m.room.member|" BOB },
};


static void
t_types_for_event(tap_t *t, const t_keys_t *keys)
{
    int                         ok;
    char                        got[512];
    size_t                      i, k, n;
    mx_event_t                 *ev;
    mx_auth_key_t               out[MX_AUTH_TYPES_MAX];
    const mx_room_version_t    *v;

    for (i = 0; i < sizeof(t_types) / sizeof(t_types[0]); i++) {
        v = t_version(t_types[i].version);
        ev = t_build(t_types[i].event, v,
                     v->room_id_from_create ? "!x" : "!r:a.org", keys,
                     NULL, 0, NULL);

        if (ev == NULL) {
            tap_ok(t, 0, "auth types v%s %s: builds", v->id, t_types[i].name);
            continue;
        }

        got[0] = '\0';
        ok = mx_auth_types_for_event(ev, out, MX_AUTH_TYPES_MAX, &n) == MX_OK;

        for (k = 0; ok && k < n; k++) {
            snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s|%s",
                     k ? " " : "", out[k].type, out[k].state_key);
        }

        ok = ok && strcmp(got, t_types[i].want) == 0;
        tap_ok(t, ok, "auth types v%s %s", v->id, t_types[i].name);

        if (!ok) {
            tap_diag("got \"%s\"", got);
        }

        mx_event_free(ev);
    }

    v = t_version("10");
    ev = t_build(MEM(BOB, DAVE, "invite"), v, "!r:a.org", keys, NULL, 0, NULL);

    if (ev != NULL) {
        tap_ok(t, mx_auth_types_for_event(ev, out, 3, &n) == MX_ERROR,
               "auth types: too little room is an error");
        mx_event_free(ev);
    }
}


/* ---- mx_auth_power_level() ---- */

typedef struct {
    const char     *version;
    const char     *name;
    const char     *create;     /* NULL: none */
    const char     *pl;         /* NULL: none */
    const char     *user;
    int             rc;
    int64_t         level;
} t_level_t;


static const t_level_t  t_levels[] = {

    { "10", "nothing known: 0", NULL, NULL, BOB, MX_OK, 0 },

    { "10", "no power levels (v10): content.creator has 100",
      CREATE_BOBC, NULL, BOB, MX_OK, 100 },

    { "10", "no power levels (v10): the create's sender has 0",
      CREATE_BOBC, NULL, ALICE, MX_OK, 0 },

    { "11", "no power levels (v11): the create's sender has 100",
      CREATE_BOBC, NULL, ALICE, MX_OK, 100 },

    { "11", "no power levels (v11): content.creator has 0",
      CREATE_BOBC, NULL, BOB, MX_OK, 0 },

    { "10", "users entry", CREATE, PL, BOB, MX_OK, 50 },

    { "10", "users_default", CREATE, PL_C("'users_default':7"), CAROL,
      MX_OK, 7 },

    { "10", "no users_default: 0", CREATE, PL_C("'users':{}"), CAROL,
      MX_OK, 0 },

    { "10", "the creator is what power levels say (v10)",
      CREATE, PL, ALICE, MX_OK, 0 },

    { "12", "the creator is infinite (v12)",
      CREATE, PL, ALICE, MX_OK, MX_AUTH_LEVEL_INFINITE },

    { "12", "an additional creator is infinite (v12)",
      CREATE_AC, PL, BOB, MX_OK, MX_AUTH_LEVEL_INFINITE },

    { "12", "the creator is infinite without power levels (v12)",
      CREATE, NULL, ALICE, MX_OK, MX_AUTH_LEVEL_INFINITE },

    { "12", "others as listed (v12)", CREATE_AC, PL, ADMIN, MX_OK, 100 },

    { "9", "a string level (v9)",
      CREATE, PL_C("'users':{'" BOB "':'  -042 '}"), BOB, MX_OK, -42 },

    { "9", "a string users_default (v9)",
      CREATE, PL_C("'users_default':'+5'"), CAROL, MX_OK, 5 },

    { "9", "a string that is not an integer (v9)",
      CREATE, PL_C("'users':{'" BOB "':'4 2'}"), BOB, MX_ERROR, 0 },

    { "9", "a string past 2^53 (v9)",
      CREATE, PL_C("'users':{'" BOB "':'9007199254740992'}"), BOB,
      MX_ERROR, 0 },

    { "10", "no strings (v10)",
      CREATE, PL_C("'users':{'" BOB "':'50'}"), BOB, MX_ERROR, 0 },

    { "10", "users that is not an object",
      CREATE, PL_C("'users':[]"), BOB, MX_ERROR, 0 },
};


static void
t_power_level(tap_t *t, const t_keys_t *keys)
{
    int                         rc, ok;
    char                        room_id[MX_EVENT_ID_LEN + 1];
    size_t                      i;
    int64_t                     level;
    mx_event_t                 *create, *pl;
    const mx_room_version_t    *v;

    for (i = 0; i < sizeof(t_levels) / sizeof(t_levels[0]); i++) {
        v = t_version(t_levels[i].version);
        create = NULL;
        pl = NULL;
        strcpy(room_id, "!r:a.org");

        if (t_levels[i].create != NULL) {
            create = t_build(t_levels[i].create, v, room_id, keys, NULL, 0,
                             NULL);
            if (create != NULL) {
                strcpy(room_id, create->room_id);
            }
        }

        if (t_levels[i].pl != NULL) {
            pl = t_build(t_levels[i].pl, v, room_id, keys, NULL, 0, NULL);
        }

        level = -1;
        rc = mx_auth_power_level(pl, create, t_levels[i].user, &level);
        ok = rc == t_levels[i].rc
             && (rc != MX_OK || level == t_levels[i].level);

        tap_ok(t, ok, "power level v%s %s", v->id, t_levels[i].name);

        if (!ok) {
            tap_diag("got %d, level %" PRId64, rc, level);
        }

        mx_event_free(create);
        mx_event_free(pl);
    }
}


/* ---- mx_auth_redaction_applies(): handling redactions ---- */

typedef struct {
    const char     *version;
    const char     *name;
    const char     *target;
    const char     *redaction;  /* "%s": the target's event ID */
    const char     *pl;
    int             rc;
    const char     *msg;
} t_redact_t;


static const t_redact_t  t_redacts[] = {

    { "10", "1: a sender at the redact level", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" BOB "','redacts':'%s',"
      "'content':{}}", PL, MX_OK, "handling redactions: 1:" },

    { "10", "2: a sender on the original sender's server", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" EVE "','redacts':'%s',"
      "'content':{}}", PL, MX_OK, "handling redactions: 2:" },

    { "10", "neither: below the redact level, from another server",
      MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" ZED "','redacts':'%s',"
      "'content':{}}", PL, MX_ERROR, "handling redactions: the sender" },

    { "10", "the redact level comes from power levels", MSG(ZED),
      "{'type':'m.room.redaction','sender':'" CAROL "','redacts':'%s',"
      "'content':{}}", PL_C("'redact':0"), MX_OK, "handling redactions: 1:" },

    { "10", "another event is not redacted", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" BOB "','redacts':'$other',"
      "'content':{'x':'%s'}}", PL, MX_ERROR,
      "handling redactions: the redaction does not name" },

    { "11", "v11: redacts in content", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" BOB "',"
      "'content':{'redacts':'%s'}}", PL, MX_OK, "handling redactions: 1:" },

    { "11", "v11: a top-level redacts names nothing", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" BOB "','redacts':'%s',"
      "'content':{}}", PL, MX_ERROR,
      "handling redactions: the redaction does not name" },

    { "10", "v10: redacts in content names nothing", MSG(CAROL),
      "{'type':'m.room.redaction','sender':'" BOB "',"
      "'content':{'redacts':'%s'}}", PL, MX_ERROR,
      "handling redactions: the redaction does not name" },
};


static void
t_redaction(tap_t *t, const t_keys_t *keys)
{
    int                         rc, ok;
    char                        text[512];
    size_t                      i;
    mx_err_t                    why;
    mx_event_t                 *create, *pl, *target, *redaction;
    const mx_room_version_t    *v;

    for (i = 0; i < sizeof(t_redacts) / sizeof(t_redacts[0]); i++) {
        v = t_version(t_redacts[i].version);

        create = t_build(CREATE, v, "!r:a.org", keys, NULL, 0, NULL);
        pl = t_build(t_redacts[i].pl, v, "!r:a.org", keys, NULL, 0, NULL);
        target = t_build(t_redacts[i].target, v, "!r:a.org", keys, NULL, 0,
                         NULL);
        redaction = NULL;

        if (target != NULL) {
            snprintf(text, sizeof(text), t_redacts[i].redaction,
                     target->event_id);
            redaction = t_build(text, v, "!r:a.org", keys, NULL, 0, NULL);
        }

        if (create == NULL || pl == NULL || redaction == NULL) {
            tap_ok(t, 0, "redaction v%s %s: builds", v->id, t_redacts[i].name);

        } else {
            memset(&why, 0, sizeof(mx_err_t));
            rc = mx_auth_redaction_applies(redaction, target, pl, create,
                                           &why);
            ok = rc == t_redacts[i].rc
                 && strncmp(why.msg, t_redacts[i].msg,
                            strlen(t_redacts[i].msg)) == 0;

            tap_ok(t, ok, "redaction v%s %s", v->id, t_redacts[i].name);

            if (!ok) {
                tap_diag("got %d: %s", rc, why.msg);
            }
        }

        mx_event_free(create);
        mx_event_free(pl);
        mx_event_free(target);
        mx_event_free(redaction);
    }
}


/* versions 1 to 5 are known for hashing and redaction, not for auth */

static void
t_unsupported(tap_t *t, const t_keys_t *keys)
{
    int                         rc;
    mx_err_t                    why;
    mx_event_t                 *create, *ev;
    const mx_room_version_t    *v;

    v = t_version("4");
    create = t_build(CREATE, v, "!r:a.org", keys, NULL, 0, NULL);
    ev = t_build(CREATE, v, "!r:a.org", keys, NULL, 0, NULL);

    if (create == NULL || ev == NULL) {
        tap_ok(t, 0, "v4: events build");

    } else {
        memset(&why, 0, sizeof(mx_err_t));
        rc = mx_auth_check(ev, (const mx_event_t *const *) &create, 1, &why);
        tap_ok(t, rc == MX_ERROR
                  && strncmp(why.msg, "room version 4:", 15) == 0,
               "v4: refused, its auth rules are not implemented");
        tap_diag("%s", why.msg);
    }

    mx_event_free(create);
    mx_event_free(ev);
}
