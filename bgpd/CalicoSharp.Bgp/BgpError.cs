namespace CalicoSharp.Bgp;

/// <summary>NOTIFICATION error codes, RFC 4271 §4.5 (and RFC 6608, RFC 7313).</summary>
public enum ErrorCode : byte
{
    MessageHeader = 1,
    OpenMessage = 2,
    UpdateMessage = 3,
    HoldTimerExpired = 4,
    FiniteStateMachine = 5,
    Cease = 6,
    RouteRefreshMessage = 7,
}

/// <summary>Subcodes, one class per error code: a subcode's value means something only under its code (1 is six
/// different errors), so each is named as <c>Subcode.&lt;Code&gt;.&lt;Name&gt;</c>.</summary>
public static class Subcode
{
    /// <summary>Message Header Error (1), RFC 4271 §6.1.</summary>
    public static class Header
    {
        public const byte ConnectionNotSynchronized = 1;
        public const byte BadMessageLength = 2;
        public const byte BadMessageType = 3;
    }

    /// <summary>OPEN Message Error (2), RFC 4271 §6.2, RFC 5492 §5.</summary>
    public static class Open
    {
        public const byte UnsupportedVersion = 1;
        public const byte BadPeerAs = 2;
        public const byte BadBgpIdentifier = 3;
        public const byte UnsupportedOptionalParameter = 4;
        public const byte UnacceptableHoldTime = 6;
        public const byte UnsupportedCapability = 7;
    }

    /// <summary>UPDATE Message Error (3), RFC 4271 §6.3.</summary>
    public static class Update
    {
        public const byte MalformedAttributeList = 1;
        public const byte UnrecognizedWellKnownAttribute = 2;
        public const byte MissingWellKnownAttribute = 3;
        public const byte AttributeFlagsError = 4;
        public const byte AttributeLengthError = 5;
        public const byte InvalidOrigin = 6;
        public const byte InvalidNextHop = 8;
        public const byte OptionalAttributeError = 9;
        public const byte InvalidNetworkField = 10;
        public const byte MalformedAsPath = 11;
    }

    /// <summary>Finite State Machine Error (5), RFC 6608.</summary>
    public static class Fsm
    {
        public const byte UnexpectedInOpenSent = 1;
        public const byte UnexpectedInOpenConfirm = 2;
        public const byte UnexpectedInEstablished = 3;
    }

    /// <summary>Cease (6), RFC 4486, RFC 8538, RFC 9384.</summary>
    public static class Cease
    {
        public const byte MaximumPrefixesReached = 1;
        public const byte AdministrativeShutdown = 2;
        public const byte PeerDeconfigured = 3;
        public const byte AdministrativeReset = 4;
        public const byte ConnectionRejected = 5;
        public const byte OtherConfigurationChange = 6;
        public const byte ConnectionCollisionResolution = 7;
        public const byte OutOfResources = 8;

        /// <summary>RFC 8538 §3.1: end the session for good, also when graceful restart with notification is negotiated
        /// (the data carries the NOTIFICATION it stands for: its code, subcode and data).</summary>
        public const byte HardReset = 9;

        /// <summary>RFC 9384: the session was closed because its BFD session went down.</summary>
        public const byte BfdDown = 10;
    }

    /// <summary>ROUTE-REFRESH Message Error (7), RFC 7313 §5.</summary>
    public static class RouteRefresh
    {
        public const byte InvalidRouteRefreshLength = 1;
    }
}

/// <summary>What RFC 7606 says to do with a malformed UPDATE.</summary>
public enum ErrorAction
{
    /// <summary>Send the NOTIFICATION and close the session (RFC 4271 behaviour).</summary>
    SessionReset,

    /// <summary>Keep the session; withdraw every prefix the UPDATE carried (RFC 7606 §2).</summary>
    TreatAsWithdraw,

    /// <summary>Drop the malformed attribute and use the rest (RFC 7606 §2).</summary>
    AttributeDiscard,
}

/// <summary>
/// A protocol error: everything the codec and the FSM reject is one of these, carrying the NOTIFICATION
/// code, subcode and data to send, and the RFC 7606 action.
/// </summary>
public sealed class BgpProtocolException : Exception
{
    public BgpProtocolException(ErrorCode code, byte subcode, string message, byte[]? data = null,
        ErrorAction action = ErrorAction.SessionReset)
        : base(message)
    {
        Code = code;
        Subcode = subcode;
        Data = data ?? [];
        Action = action;
    }

    public BgpProtocolException()
        : this(ErrorCode.Cease, 0, "BGP protocol error")
    {
    }

    public BgpProtocolException(string message)
        : this(ErrorCode.Cease, 0, message)
    {
    }

    public BgpProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
        Code = ErrorCode.Cease;
        Data = [];
    }

    public ErrorCode Code { get; }

    public byte Subcode { get; }

    public new byte[] Data { get; }

    public ErrorAction Action { get; }

    public NotificationMessage ToNotification() => new(Code, Subcode, Data);
}
